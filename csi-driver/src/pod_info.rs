//! What files mode reads from NodePublishVolume: the pod the kubelet
//! describes (`podInfoOnMount`), the pod's service-account token
//! (`tokenRequests`), the JWT audiences the pod asks for, and the group its
//! files are for (`volume_mount_group`, the pod's fsGroup).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use signet_proto::csi::v1::{VolumeCapability, volume_capability};
use zeroize::Zeroizing;

pub const POD_UID_KEY: &str = "csi.storage.k8s.io/pod.uid";
pub const POD_NAME_KEY: &str = "csi.storage.k8s.io/pod.name";
pub const POD_NAMESPACE_KEY: &str = "csi.storage.k8s.io/pod.namespace";
pub const SERVICE_ACCOUNT_KEY: &str = "csi.storage.k8s.io/serviceAccount.name";
/// JSON map of audience to `{token, expirationTimestamp}`, present when the
/// CSIDriver has `tokenRequests`.
pub const TOKENS_KEY: &str = "csi.storage.k8s.io/serviceAccount.tokens";
/// Volume attribute: comma-separated JWT-SVID audiences to write.
pub const JWT_AUDIENCES_KEY: &str = "jwtAudiences";

/// At most this many JWT files per volume: each is renewed on its own.
pub const MAX_AUDIENCES: usize = 8;
const MAX_AUDIENCE_LEN: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodInfoError {
    #[error(
        "volume_context lacks {0}: files mode needs the pod's name, namespace, UID and \
         service account, which the kubelet only sends when the CSIDriver has \
         podInfoOnMount: true"
    )]
    Missing(&'static str),
    #[error(
        "{TOKENS_KEY} is not the kubelet's token map ({0}); \
         check the CSIDriver's tokenRequests"
    )]
    Tokens(String),
    #[error(
        "volumeAttributes.{JWT_AUDIENCES_KEY}: {0} (a comma-separated list of at most \
         {MAX_AUDIENCES} audiences of 1 to {MAX_AUDIENCE_LEN} characters)"
    )]
    Audiences(String),
    #[error("volume_mount_group {0:?} is not a numeric group id")]
    MountGroup(String),
}

/// A pod as the kubelet describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
}

impl PodInfo {
    /// Reads the pod info keys; every one is required.
    pub fn from_context(context: &HashMap<String, String>) -> Result<Self, PodInfoError> {
        let get = |key: &'static str| {
            context
                .get(key)
                .filter(|value| !value.is_empty())
                .cloned()
                .ok_or(PodInfoError::Missing(key))
        };
        Ok(Self {
            uid: get(POD_UID_KEY)?,
            namespace: get(POD_NAMESPACE_KEY)?,
            name: get(POD_NAME_KEY)?,
            service_account: get(SERVICE_ACCOUNT_KEY)?,
        })
    }
}

impl std::fmt::Display for PodInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} ({})", self.namespace, self.name, self.uid)
    }
}

/// The pod's service-account token for the issuer: a bearer credential,
/// never logged or persisted.
#[derive(Clone, PartialEq, Eq)]
pub struct PodToken(Zeroizing<String>);

impl PodToken {
    pub fn new(token: String) -> Self {
        Self(Zeroizing::new(token))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PodToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PodToken(<redacted>)")
    }
}

#[derive(Deserialize)]
struct TokenEntry {
    token: String,
}

/// The token the kubelet minted for `audience`, if the CSIDriver asks for
/// one. Absent map or audience: `None` (the issuer then relies on its pod
/// watch alone); a map that does not parse: an error.
pub fn pod_token(
    context: &HashMap<String, String>,
    audience: &str,
) -> Result<Option<PodToken>, PodInfoError> {
    let Some(json) = context.get(TOKENS_KEY).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let mut tokens: HashMap<String, TokenEntry> =
        serde_json::from_str(json).map_err(|e| PodInfoError::Tokens(e.to_string()))?;
    Ok(tokens
        .remove(audience)
        .map(|entry| entry.token)
        .filter(|token| !token.is_empty())
        .map(PodToken::new))
}

/// A JWT-SVID audience a volume asks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Audience(String);

impl Audience {
    pub fn new(audience: &str) -> Result<Self, PodInfoError> {
        if audience.is_empty() || audience.len() > MAX_AUDIENCE_LEN {
            return Err(PodInfoError::Audiences(format!(
                "audience {audience:?} has the wrong length"
            )));
        }
        if audience.chars().any(char::is_control) {
            return Err(PodInfoError::Audiences(format!(
                "audience {audience:?} has control characters"
            )));
        }
        Ok(Self(audience.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `jwt_<audience>.token`, with every byte that is not a letter, digit,
    /// `.`, `_` or `-` percent-encoded, so any audience (a URL, say) makes
    /// one plain file name.
    pub fn file_name(&self) -> String {
        let mut name = String::from("jwt_");
        for byte in self.0.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
                name.push(char::from(byte));
            } else {
                name.push_str(&format!("%{byte:02X}"));
            }
        }
        name.push_str(".token");
        name
    }
}

/// The audiences of `jwtAudiences`, in order, without duplicates.
pub fn jwt_audiences(context: &HashMap<String, String>) -> Result<Vec<Audience>, PodInfoError> {
    let Some(list) = context.get(JWT_AUDIENCES_KEY) else {
        return Ok(Vec::new());
    };
    let mut audiences: Vec<Audience> = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let audience = Audience::new(part)?;
        if !audiences.contains(&audience) {
            audiences.push(audience);
        }
    }
    if audiences.len() > MAX_AUDIENCES {
        return Err(PodInfoError::Audiences(format!(
            "{} audiences given",
            audiences.len()
        )));
    }
    Ok(audiences)
}

/// The group the pod's files are for: the pod's fsGroup, which the kubelet
/// passes as `volume_mount_group` because the driver advertises
/// VOLUME_MOUNT_GROUP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MountGroup(u32);

impl MountGroup {
    pub fn from_capability(
        capability: Option<&VolumeCapability>,
    ) -> Result<Option<Self>, PodInfoError> {
        let group = match capability.and_then(|c| c.access_type.as_ref()) {
            Some(volume_capability::AccessType::Mount(mount)) => mount.volume_mount_group.as_str(),
            _ => "",
        };
        if group.is_empty() {
            return Ok(None);
        }
        match group.parse::<u32>() {
            // -1 (all bits) means "no change" to chown(2).
            Ok(gid) if gid != u32::MAX => Ok(Some(Self(gid))),
            _ => Err(PodInfoError::MountGroup(group.to_owned())),
        }
    }

    pub fn gid(self) -> u32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn pod_info_needs_every_key() {
        let full = context(&[
            (POD_UID_KEY, "u-1"),
            (POD_NAME_KEY, "web-0"),
            (POD_NAMESPACE_KEY, "payments"),
            (SERVICE_ACCOUNT_KEY, "api"),
        ]);
        let pod = PodInfo::from_context(&full).unwrap();
        assert_eq!(pod.to_string(), "payments/web-0 (u-1)");
        for key in [
            POD_UID_KEY,
            POD_NAME_KEY,
            POD_NAMESPACE_KEY,
            SERVICE_ACCOUNT_KEY,
        ] {
            let mut partial = full.clone();
            partial.remove(key);
            let error = PodInfo::from_context(&partial).unwrap_err();
            assert_eq!(error, PodInfoError::Missing(key));
            assert!(error.to_string().contains("podInfoOnMount: true"));
        }
    }

    #[test]
    fn the_token_for_the_audience_is_taken() {
        let json = r#"{"signet-csi": {"token": "tok-1", "expirationTimestamp": "2030-01-01T00:00:00Z"},
                       "vault": {"token": "tok-2", "expirationTimestamp": "2030-01-01T00:00:00Z"}}"#;
        let with = context(&[(TOKENS_KEY, json)]);
        assert_eq!(
            pod_token(&with, "signet-csi").unwrap().unwrap().as_str(),
            "tok-1"
        );
        assert_eq!(pod_token(&with, "other").unwrap(), None);
        assert_eq!(pod_token(&context(&[]), "signet-csi").unwrap(), None);
        assert!(matches!(
            pod_token(&context(&[(TOKENS_KEY, "not json")]), "signet-csi"),
            Err(PodInfoError::Tokens(_))
        ));
        let token = pod_token(&with, "vault").unwrap().unwrap();
        assert!(!format!("{token:?}").contains("tok-2"));
    }

    #[test]
    fn audiences_are_listed_and_named_safely() {
        let audiences = jwt_audiences(&context(&[(
            JWT_AUDIENCES_KEY,
            " vault, https://sts.example.com/x ,vault,,",
        )]))
        .unwrap();
        let names: Vec<String> = audiences.iter().map(Audience::file_name).collect();
        assert_eq!(
            names,
            [
                "jwt_vault.token",
                "jwt_https%3A%2F%2Fsts.example.com%2Fx.token"
            ]
        );
        assert!(jwt_audiences(&context(&[])).unwrap().is_empty());
        let too_many = (0..9)
            .map(|i| format!("a{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(jwt_audiences(&context(&[(JWT_AUDIENCES_KEY, &too_many)])).is_err());
        assert!(jwt_audiences(&context(&[(JWT_AUDIENCES_KEY, "a\nb")])).is_err());
        // No audience can name a path outside the volume or a hidden file.
        assert_eq!(Audience::new("..").unwrap().file_name(), "jwt_...token");
        assert_eq!(
            Audience::new("../../etc/x").unwrap().file_name(),
            "jwt_..%2F..%2Fetc%2Fx.token"
        );
    }

    #[test]
    fn mount_group_comes_from_the_mount_capability() {
        let capability = |group: &str| VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(
                volume_capability::MountVolume {
                    volume_mount_group: group.to_owned(),
                    ..Default::default()
                },
            )),
            access_mode: None,
        };
        assert_eq!(
            MountGroup::from_capability(Some(&capability("2000"))).unwrap(),
            Some(MountGroup(2000))
        );
        assert_eq!(
            MountGroup::from_capability(Some(&capability(""))).unwrap(),
            None
        );
        assert_eq!(MountGroup::from_capability(None).unwrap(), None);
        for bad in ["-1", "4294967295", "staff"] {
            assert!(MountGroup::from_capability(Some(&capability(bad))).is_err());
        }
    }
}
