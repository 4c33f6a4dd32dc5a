//! Join tokens: how a standalone agent proves it may join.
//!
//! Tokens are configured by name and stored only as SHA-256 hashes, so the
//! operator's configuration and state never hold a usable secret. A
//! single-use token is marked spent in the state directory before the agent
//! receives its SVID, so a crash cannot make it usable twice.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use signet_proto::issuer_protocol::JOIN_AGENT_PATH_PREFIX;

use crate::agents::{AdmittedAgent, JoinRejection, JoinVerifier};

const SPENT_FILE: &str = "join-tokens-spent.json";
/// Random bytes in a generated token (256 bits).
const TOKEN_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("join token is not valid")]
    Unknown,
    #[error("join token {name:?} was single-use and has already been used")]
    Spent { name: String },
    #[error("join token {name:?}: {reason}")]
    Config { name: String, reason: String },
    #[error("join token state {path}: {reason}")]
    State { path: PathBuf, reason: String },
}

/// A token as configured.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenConfig {
    /// The agent's join name: becomes `agent.name` and the last segment of
    /// the agent's SPIFFE ID (`spiffe://<td>/signet/agent/join/<name>`).
    pub name: String,
    /// Hex SHA-256 of the token (what `signet-operator token generate` prints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Alternatively, a file holding the token itself (hashed on load).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// A reusable token may join any number of agents under the same name;
    /// the default is single-use.
    #[serde(default)]
    pub reusable: bool,
}

#[derive(Clone, Debug)]
struct Entry {
    name: String,
    reusable: bool,
}

/// The configured tokens and which single-use ones are spent.
#[derive(Debug)]
pub struct JoinTokens {
    by_hash: HashMap<String, Entry>,
    spent_path: PathBuf,
    spent: Mutex<BTreeSet<String>>,
}

#[derive(Default, Deserialize, Serialize)]
struct SpentState {
    spent_sha256: BTreeSet<String>,
}

/// A join name must be usable as a SPIFFE ID path segment.
pub fn validate_join_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err("must be 1 to 128 characters".into());
    }
    if name == "." || name == ".." {
        return Err("must not be . or ..".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("may contain only letters, digits, '.', '-' and '_'".into());
    }
    Ok(())
}

/// Hex SHA-256 of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        token.trim().as_bytes(),
    ))
}

/// A new random token (URL-safe base64 of 32 random bytes).
pub fn generate_token() -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; TOKEN_BYTES];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

impl JoinTokens {
    /// Loads the configured tokens and the spent-token record from `state_dir`.
    pub fn load(configs: &[JoinTokenConfig], state_dir: &Path) -> Result<Self, JoinError> {
        let mut by_hash = HashMap::new();
        for config in configs {
            let config_error = |reason: String| JoinError::Config {
                name: config.name.clone(),
                reason,
            };
            validate_join_name(&config.name).map_err(|r| config_error(format!("name {r}")))?;
            let hash = match (&config.sha256, &config.token_file) {
                (Some(hash), None) => {
                    let hash = hash.trim().to_ascii_lowercase();
                    let hash = hash.strip_prefix("sha256:").unwrap_or(&hash).to_owned();
                    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(config_error("sha256 must be 64 hex characters".into()));
                    }
                    hash
                }
                (None, Some(path)) => {
                    let token = std::fs::read_to_string(path).map_err(|e| {
                        config_error(format!("reading token_file {}: {e}", path.display()))
                    })?;
                    if token.trim().is_empty() {
                        return Err(config_error(format!(
                            "token_file {} is empty",
                            path.display()
                        )));
                    }
                    hash_token(&token)
                }
                _ => {
                    return Err(config_error(
                        "set exactly one of sha256 and token_file".into(),
                    ));
                }
            };
            let entry = Entry {
                name: config.name.clone(),
                reusable: config.reusable,
            };
            if by_hash.insert(hash, entry).is_some() {
                return Err(config_error("the same token is configured twice".into()));
            }
        }
        let spent_path = state_dir.join(SPENT_FILE);
        let spent = match signet_runtime::files::read_optional(&spent_path) {
            Ok(Some(bytes)) => {
                serde_json::from_slice::<SpentState>(&bytes)
                    .map_err(|e| JoinError::State {
                        path: spent_path.clone(),
                        reason: e.to_string(),
                    })?
                    .spent_sha256
            }
            Ok(None) => BTreeSet::new(),
            Err(error) => {
                return Err(JoinError::State {
                    path: spent_path,
                    reason: error.to_string(),
                });
            }
        };
        Ok(Self {
            by_hash,
            spent_path,
            spent: Mutex::new(spent),
        })
    }

    /// Checks a presented token and, if single-use, spends it. Returns the
    /// join name.
    pub fn redeem(&self, presented: &str) -> Result<String, JoinError> {
        let hash = hash_token(presented);
        let entry = self.by_hash.get(&hash).ok_or(JoinError::Unknown)?;
        if entry.reusable {
            return Ok(entry.name.clone());
        }
        let mut spent = self.spent.lock().map_err(|_| JoinError::State {
            path: self.spent_path.clone(),
            reason: "lock poisoned".into(),
        })?;
        if spent.contains(&hash) {
            return Err(JoinError::Spent {
                name: entry.name.clone(),
            });
        }
        let mut next = spent.clone();
        next.insert(hash);
        let encoded = serde_json::to_vec_pretty(&SpentState {
            spent_sha256: next.clone(),
        })
        .map_err(|e| JoinError::State {
            path: self.spent_path.clone(),
            reason: e.to_string(),
        })?;
        // Persist first: only a durable record makes the token spent.
        signet_runtime::files::write_atomic(&self.spent_path, &encoded, 0o600).map_err(|e| {
            JoinError::State {
                path: self.spent_path.clone(),
                reason: e.to_string(),
            }
        })?;
        *spent = next;
        Ok(entry.name.clone())
    }
}

impl JoinVerifier for JoinTokens {
    fn verify<'a>(
        &'a self,
        request: &'a signet_proto::issuer::v1::JoinRequest,
    ) -> BoxFuture<'a, Result<AdmittedAgent, JoinRejection>> {
        use signet_proto::issuer::v1::join_request::Credential;
        Box::pin(async move {
            let token = match &request.credential {
                Some(Credential::JoinToken(token)) if !token.is_empty() => token,
                _ => {
                    return Err(JoinRejection {
                        reason: "unsupported_credential",
                        message: "this issuer accepts join tokens only".into(),
                    });
                }
            };
            let name = self.redeem(token).map_err(|error| JoinRejection {
                reason: match error {
                    JoinError::Spent { .. } => "token_spent",
                    JoinError::Unknown => "invalid_token",
                    _ => "token_state",
                },
                message: error.to_string(),
            })?;
            Ok(AdmittedAgent {
                path: format!("{JOIN_AGENT_PATH_PREFIX}{name}"),
                name,
                node_name: None,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, token: &str, reusable: bool) -> JoinTokenConfig {
        JoinTokenConfig {
            name: name.into(),
            sha256: Some(hash_token(token)),
            token_file: None,
            reusable,
        }
    }

    #[test]
    fn single_use_tokens_are_spent_durably() {
        let state = tempfile::tempdir().unwrap();
        let configs = vec![
            config("vm-1", "secret-one", false),
            config("fleet", "shared", true),
        ];
        let tokens = JoinTokens::load(&configs, state.path()).unwrap();
        assert_eq!(tokens.redeem("secret-one").unwrap(), "vm-1");
        assert!(matches!(
            tokens.redeem("secret-one"),
            Err(JoinError::Spent { .. })
        ));
        assert_eq!(tokens.redeem("shared").unwrap(), "fleet");
        assert_eq!(tokens.redeem("shared").unwrap(), "fleet");
        assert!(matches!(tokens.redeem("guess"), Err(JoinError::Unknown)));

        // After a restart the spent token stays spent.
        let reloaded = JoinTokens::load(&configs, state.path()).unwrap();
        assert!(matches!(
            reloaded.redeem("secret-one"),
            Err(JoinError::Spent { .. })
        ));
        // The state file holds hashes only.
        let state_text = std::fs::read_to_string(state.path().join(SPENT_FILE)).unwrap();
        assert!(!state_text.contains("secret-one"));
    }

    #[test]
    fn token_file_and_hash_forms_agree() {
        let dir = tempfile::tempdir().unwrap();
        let token = generate_token().unwrap();
        assert!(token.len() >= 43);
        let file = dir.path().join("token");
        std::fs::write(&file, format!("{token}\n")).unwrap();
        let from_file = JoinTokenConfig {
            name: "vm-2".into(),
            sha256: None,
            token_file: Some(file),
            reusable: true,
        };
        let tokens = JoinTokens::load(&[from_file], dir.path()).unwrap();
        assert_eq!(tokens.redeem(&token).unwrap(), "vm-2");
    }

    #[test]
    fn bad_configuration_is_rejected_with_the_token_name() {
        let dir = tempfile::tempdir().unwrap();
        let bad_name = config("has/slash", "x", false);
        let error = JoinTokens::load(&[bad_name], dir.path())
            .unwrap_err()
            .to_string();
        assert!(error.contains("has/slash"), "{error}");
        let neither = JoinTokenConfig {
            name: "a".into(),
            sha256: None,
            token_file: None,
            reusable: false,
        };
        assert!(JoinTokens::load(&[neither], dir.path()).is_err());
        let short = JoinTokenConfig {
            name: "a".into(),
            sha256: Some("abc".into()),
            token_file: None,
            reusable: false,
        };
        assert!(JoinTokens::load(&[short], dir.path()).is_err());
        let duplicate = vec![config("a", "same", false), config("b", "same", false)];
        assert!(JoinTokens::load(&duplicate, dir.path()).is_err());
    }
}
