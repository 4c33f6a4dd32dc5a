//! Fuzz targets for every parser that reads input an attacker can shape:
//! SPIFFE IDs, SVID templates, rule expressions, JWT-SVIDs, CSRs, cgroup
//! files, the HTTP/2 `:authority` rewriter on the workload socket, and the
//! kubelet's pod list.
//!
//! Property-based (proptest) rather than coverage-guided: cargo-fuzz needs
//! a nightly compiler, which this project does not use. Each target mixes
//! random input with mutations (byte flips, insertions, deletions,
//! truncations) of a valid seed, so inputs get past the first length or
//! magic check, and asserts more than "does not panic" where there is a
//! property to hold: what parses is canonical, what validates is what was
//! signed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestRunner};
use signet_identity::{
    JwtAuthority, KeyType, PrivateKey, SpiffeId, TrustBundle, TrustDomain, validate_jwt_svid,
};

/// One target: a name and how to run it for a number of cases.
pub struct Target {
    pub name: &'static str,
    pub what: &'static str,
    run: fn(&mut TestRunner) -> Result<(), String>,
}

/// What one run of a target did.
#[derive(Debug)]
pub struct Report {
    pub name: &'static str,
    pub cases: u32,
    /// Inputs the parser accepted (so the checks on accepted input ran).
    pub accepted: u64,
    pub elapsed: Duration,
}

/// Accepted inputs of the target running now (targets run one at a time).
static ACCEPTED: AtomicU64 = AtomicU64::new(0);

fn accepted() {
    ACCEPTED.fetch_add(1, Ordering::Relaxed);
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "spiffe_id",
        what: "SpiffeId::parse, TrustDomain::new",
        run: spiffe_id,
    },
    Target {
        name: "template",
        what: "SVID template parser",
        run: template,
    },
    Target {
        name: "expression",
        what: "rule expression parser and evaluator",
        run: expression,
    },
    Target {
        name: "jwt",
        what: "JWT-SVID validator",
        run: jwt,
    },
    Target {
        name: "csr",
        what: "PKCS#10 CSR parser and self-signature check",
        run: csr,
    },
    Target {
        name: "cgroup",
        what: "/proc/<pid>/cgroup parser",
        run: cgroup,
    },
    Target {
        name: "h2_authority",
        what: "HTTP/2 :authority rewriter on the workload socket",
        run: h2_authority,
    },
    Target {
        name: "kubelet_pods",
        what: "kubelet /pods decoder",
        run: kubelet_pods,
    },
];

/// Runs `target` for `cases` inputs; a failing input is shrunk and named.
pub fn run(target: &Target, cases: u32) -> Result<Report, String> {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        // Shrinking a failure is worth a few seconds, not hours.
        max_shrink_iters: 4096,
        ..Config::default()
    });
    #[allow(clippy::disallowed_methods)]
    let started = Instant::now();
    ACCEPTED.store(0, Ordering::Relaxed);
    (target.run)(&mut runner).map_err(|e| format!("{}: {e}", target.name))?;
    Ok(Report {
        name: target.name,
        cases,
        accepted: ACCEPTED.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}

fn outcome<T: std::fmt::Debug>(
    result: Result<(), proptest::test_runner::TestError<T>>,
) -> Result<(), String> {
    result.map_err(|e| e.to_string())
}

/// A valid seed with up to three random edits.
fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> + use<> {
    proptest::collection::vec((0u8..4, any::<Index>(), any::<u8>()), 0..4).prop_map(move |edits| {
        let mut bytes = seed.clone();
        for (edit, at, byte) in edits {
            match edit {
                0 if !bytes.is_empty() => {
                    let i = at.index(bytes.len());
                    bytes[i] = byte;
                }
                1 => bytes.insert(at.index(bytes.len() + 1), byte),
                2 if !bytes.is_empty() => {
                    bytes.remove(at.index(bytes.len()));
                }
                3 => bytes.truncate(at.index(bytes.len() + 1)),
                _ => {}
            }
        }
        bytes
    })
}

fn mutated_text(seed: &str) -> impl Strategy<Value = String> + use<> {
    mutated(seed.as_bytes().to_vec()).prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn spiffe_id(runner: &mut TestRunner) -> Result<(), String> {
    let input = prop_oneof![
        any::<String>(),
        "spiffe://[a-zA-Z0-9._:@%?#/ -]{0,60}",
        mutated_text("spiffe://example.org/ns/default/sa/web"),
    ];
    outcome(runner.run(&input, |s| {
        if let Ok(id) = SpiffeId::parse(&s) {
            accepted();
            // Accepted means canonical: no normalisation hides a second
            // spelling of one identity.
            prop_assert_eq!(id.to_string(), s.clone());
            let rebuilt = SpiffeId::from_path(id.trust_domain(), id.path());
            prop_assert_eq!(rebuilt, Ok(id));
        }
        if let Ok(td) = TrustDomain::new(&s) {
            prop_assert_eq!(td.as_str(), s.as_str());
        }
        Ok(())
    }))
}

fn template(runner: &mut TestRunner) -> Result<(), String> {
    let input = prop_oneof![
        "\\PC{0,60}",
        "[{} a.]{0,40}",
        mutated_text(
            "/ns/{{ workload.kubernetes.namespace }}/sa/{{workload.kubernetes.service_account}}"
        ),
    ];
    outcome(runner.run(&input, |s| {
        if let Ok(t) = signet_policy::template::Template::parse(&s) {
            accepted();
            let again = signet_policy::template::Template::parse(&t.to_string());
            prop_assert_eq!(
                again.as_ref().ok(),
                Some(&t),
                "display of {:?} does not parse back",
                s
            );
        }
        Ok(())
    }))
}

/// Well-formed expressions from the grammar (over known attributes).
fn grammar_expression() -> impl Strategy<Value = String> {
    let attribute = prop_oneof![
        Just("workload.unix.uid"),
        Just("workload.kubernetes.labels.app"),
        Just("workload.kubernetes.service_account"),
        Just("workload.docker.image_id"),
        Just("agent.name"),
    ];
    let value = "[a-z0-9.-]{0,6}";
    let atom = prop_oneof![
        (
            attribute.clone(),
            prop_oneof![Just("=="), Just("!=")],
            value
        )
            .prop_map(|(a, op, v)| format!("{a} {op} \"{v}\"")),
        (attribute.clone(), proptest::collection::vec(value, 1..4))
            .prop_map(|(a, vs)| format!("{a} in [\"{}\"]", vs.join("\", \""))),
        (attribute.clone(), "[a-z*]{0,6}").prop_map(|(a, g)| format!("glob({a}, \"{g}\")")),
        attribute.prop_map(|a| format!("has({a})")),
    ];
    atom.prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("({a}) && ({b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} || {b}")),
            inner.prop_map(|a| format!("!({a})")),
        ]
    })
}

fn expression(runner: &mut TestRunner) -> Result<(), String> {
    let input = prop_oneof![
        "\\PC{0,80}".prop_map(|s| (s, false)),
        grammar_expression().prop_map(|s| (s, true)),
        grammar_expression()
            .prop_flat_map(|s| mutated_text(&s))
            .prop_map(|s| (s, false)),
    ];
    let mut attributes = signet_policy::Attributes::new();
    attributes
        .set(signet_policy::Field::UnixUid, "1000")
        .set(signet_policy::Field::DockerImageId, "sha256:00");
    outcome(runner.run(&input, |(s, well_formed)| {
        match signet_policy::Expr::parse(&s) {
            Ok(expr) => {
                accepted();
                let _ = expr.evaluate(&attributes);
                let _ = expr.explain(&attributes);
                // What parses prints back as an expression that parses to
                // the same tree.
                let again = signet_policy::Expr::parse(&expr.to_string());
                prop_assert_eq!(
                    again.as_ref().ok(),
                    Some(&expr),
                    "{:?} prints as {}",
                    s,
                    expr
                );
            }
            Err(error) => {
                prop_assert!(
                    !well_formed,
                    "a well-formed expression was refused: {s:?}: {error}"
                );
            }
        }
        Ok(())
    }))
}

struct JwtFixture {
    token: String,
    bundle: TrustBundle,
    now: SystemTime,
    claims: serde_json::Map<String, serde_json::Value>,
}

fn jwt_fixture() -> Result<Arc<JwtFixture>, String> {
    let key = PrivateKey::generate(KeyType::EcP256).map_err(|e| e.to_string())?;
    let td = TrustDomain::new("example.org").map_err(|e| e.to_string())?;
    let id = SpiffeId::from_path(&td, "/web").map_err(|e| e.to_string())?;
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let svid = signet_identity::mint_jwt_svid(
        &key,
        "kid-1",
        &id,
        &["svc".to_owned()],
        Duration::from_secs(300),
        &serde_json::Map::new(),
        now,
    )
    .map_err(|e| e.to_string())?;
    let mut bundle = TrustBundle::new(td);
    bundle.jwt_authorities.push(JwtAuthority {
        key_id: "kid-1".to_owned(),
        public_key: key.public_key().clone(),
        not_after: None,
    });
    let claims = validate_jwt_svid(&svid.token, "svc", &bundle, now)
        .map_err(|e| format!("the seed token does not validate: {e}"))?
        .claims;
    Ok(Arc::new(JwtFixture {
        token: svid.token,
        bundle,
        now,
        claims,
    }))
}

fn jwt(runner: &mut TestRunner) -> Result<(), String> {
    let fixture = jwt_fixture()?;
    let token_shaped = (
        proptest::collection::vec(any::<u8>(), 0..64),
        "\\{[ -~]{0,80}\\}",
        proptest::collection::vec(any::<u8>(), 0..80),
    )
        .prop_map(|(header, payload, signature)| {
            format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(payload),
                URL_SAFE_NO_PAD.encode(signature)
            )
        });
    let input = prop_oneof![any::<String>(), token_shaped, mutated_text(&fixture.token),];
    let f = fixture.clone();
    outcome(runner.run(&input, move |token| {
        if let Ok(valid) = validate_jwt_svid(&token, "svc", &f.bundle, f.now) {
            accepted();
            // Only what was signed validates: an edit that survives (base64
            // has spare bits in its last character) must not change a claim.
            prop_assert_eq!(&valid.claims, &f.claims);
        }
        Ok(())
    }))
}

fn csr(runner: &mut TestRunner) -> Result<(), String> {
    let key = PrivateKey::generate(KeyType::EcP256).map_err(|e| e.to_string())?;
    let seed = signet_identity::x509::create_csr(&key).map_err(|e| e.to_string())?;
    let expected = key.public_key().clone();
    let input = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        mutated(seed),
    ];
    outcome(runner.run(&input, move |der| {
        if let Ok(public) = signet_identity::x509::public_key_from_csr(&der) {
            accepted();
            // The self-signature binds the key: no edit yields another key.
            prop_assert_eq!(public, expected.clone());
        }
        Ok(())
    }))
}

fn cgroup(runner: &mut TestRunner) -> Result<(), String> {
    let seeds = [
        "12:pids:/kubepods/burstable/pod2c48913c-b29f-11e7-9350-020968147796/9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961\n0::/\n",
        "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod2c48913c_b29f_11e7_9350_020968147796.slice/cri-containerd-9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961.scope\n",
        "0::/system.slice/docker-9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961.scope\n",
        "0::/user.slice/user-1000.slice/user@1000.service/app.slice/libpod-9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961.scope/container\n",
    ];
    let input = prop_oneof![
        "\\PC{0,400}",
        proptest::collection::vec("[a-z0-9_:.@-]{0,80}", 0..8)
            .prop_map(|segments| format!("0::/{}\n", segments.join("/"))),
        mutated_text(seeds[0]),
        mutated_text(seeds[1]),
        mutated_text(seeds[2]),
        mutated_text(seeds[3]),
    ];
    outcome(runner.run(&input, |text| {
        if signet_agent::attest::cgroup::parse_proc_cgroup(&text).is_ok() {
            accepted();
        }
        Ok(())
    }))
}

/// A client's HEADERS frame for a Workload API call over a unix socket,
/// with a path-shaped `:authority` (HPACK literals, no Huffman).
fn headers_frame() -> Vec<u8> {
    fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        out.push(0x00);
        out.push(u8::try_from(name.len()).unwrap_or(0));
        out.extend_from_slice(name);
        out.push(u8::try_from(value.len()).unwrap_or(0));
        out.extend_from_slice(value);
    }
    let mut block = Vec::new();
    literal(&mut block, b":method", b"POST");
    literal(&mut block, b":scheme", b"http");
    literal(&mut block, b":path", b"/SpiffeWorkloadAPI/FetchX509SVID");
    literal(&mut block, b":authority", b"%2Frun%2Fsignet%2Fagent.sock");
    literal(&mut block, b"workload.spiffe.io", b"true");
    let mut frame = Vec::new();
    let len = block.len();
    frame.extend_from_slice(&[
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        0x1,
        0x4,
        0,
        0,
        0,
        1,
    ]);
    frame.extend_from_slice(&block);
    frame
}

fn h2_authority(runner: &mut TestRunner) -> Result<(), String> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let chunks = prop_oneof![
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..32),
        mutated(headers_frame()).prop_map(|frame| vec![frame]),
        (mutated(headers_frame()), any::<Index>()).prop_map(|(frame, at)| {
            // The same bytes split at a random point, as reads deliver them.
            let cut = at.index(frame.len() + 1);
            vec![frame[..cut].to_vec(), frame[cut..].to_vec()]
        }),
    ];
    outcome(runner.run(&chunks, |chunks| {
        let mut rewriter = signet_runtime::h2_authority::AuthorityRewriter::new();
        rewriter.feed(PREFACE);
        accepted();
        let mut fed = PREFACE.len();
        for chunk in &chunks {
            rewriter.feed(chunk);
            fed += chunk.len();
        }
        // Output never grows without bound relative to input (a header
        // block is re-encoded, at most a few bytes more per field).
        prop_assert!(rewriter.output().len() <= fed * 4 + 64);
        Ok(())
    }))
}

fn kubelet_pods(runner: &mut TestRunner) -> Result<(), String> {
    let seed = include_bytes!("../../node-agent/tests/fixtures/kubelet/pods.json").to_vec();
    let input = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        mutated(seed),
        "\\{\"items\":\\[\\{\"metadata\":\\{[ -~]{0,80}\\}\\}\\]\\}".prop_map(String::into_bytes),
    ];
    #[allow(clippy::disallowed_methods)]
    let now = tokio::time::Instant::from_std(Instant::now());
    outcome(runner.run(&input, move |json| {
        if let Ok(list) = signet_agent::attest::kubelet::PodList::parse(&json, 1, now) {
            accepted();
            let _ = list.pods().len();
        }
        Ok(())
    }))
}
