//! Files mode against a Delegated server implemented in this test (root
//! only, real tmpfs mounts): it records what the driver asks and sends what
//! the test scripts, with real SVIDs minted by a CA keyset, to prove what a
//! real agent cannot be made to do on cue: a re-publish with a fresh pod
//! token reopens the pod's subscription with it and closes the old one (one
//! subscription per volume), the same token again changes nothing, a lost
//! stream makes the volume condition abnormal until the driver has
//! reconnected, and an expired SVID in the volume is reported.

// Test helpers outside #[test] functions panic on setup failure too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use signet_e2e::deadline::{Deadline, wall_now};

use rustix::mount::UnmountFlags;
use signet_csi::config::{DriverConfig, FilesConfig};
use signet_csi::mountinfo;
use signet_csi::service::{EPHEMERAL_KEY, NodeService};
use signet_identity::{
    CaConfig, CaKeyset, KeyType, PrivateKey, SpiffeId, TrustDomain, X509SvidParams,
};
use signet_proto::csi::v1::{self as csi, node_server::Node, volume_capability};
use signet_proto::issuer::v1 as pb;
use signet_proto::issuer::v1::delegated_server::{Delegated, DelegatedServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

#[allow(clippy::print_stderr)] // the reason a test did not run
fn skip(reason: &str) {
    eprintln!("SKIPPED: {reason}");
}

/// The sending half of one SubscribePodSvids stream.
type UpdateSender = mpsc::Sender<Result<pb::PodSvidsUpdate, Status>>;

/// A scripted agent: every subscription gets the current update at once;
/// the test can push more, or drop every stream.
#[derive(Default)]
struct FakeAgent {
    current: Mutex<pb::PodSvidsUpdate>,
    /// (pod token, stream) per SubscribePodSvids call, in order.
    subscriptions: Mutex<Vec<(String, UpdateSender)>>,
}

impl FakeAgent {
    fn tokens(&self) -> Vec<String> {
        self.subscriptions
            .lock()
            .unwrap()
            .iter()
            .map(|(token, _)| token.clone())
            .collect()
    }

    fn open_streams(&self) -> usize {
        self.subscriptions
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, sender)| !sender.is_closed())
            .count()
    }

    async fn push(&self, update: pb::PodSvidsUpdate) {
        *self.current.lock().unwrap() = update.clone();
        let senders: Vec<_> = self
            .subscriptions
            .lock()
            .unwrap()
            .iter()
            .map(|(_, sender)| sender.clone())
            .collect();
        for sender in senders {
            let _ = sender.send(Ok(update.clone())).await;
        }
    }

    /// Ends every open stream with Unavailable, as an agent going away.
    async fn fail_streams(&self) {
        let senders: Vec<_> = self
            .subscriptions
            .lock()
            .unwrap()
            .iter_mut()
            // Keep the record of each call, with a stream that is over.
            .map(|(_, sender)| std::mem::replace(sender, mpsc::channel(1).0))
            .collect();
        for sender in senders {
            let _ = sender
                .send(Err(Status::unavailable("the agent is shutting down")))
                .await;
        }
    }
}

struct Service(Arc<FakeAgent>);

#[tonic::async_trait]
impl Delegated for Service {
    type SubscribePodSvidsStream = ReceiverStream<Result<pb::PodSvidsUpdate, Status>>;

    async fn subscribe_pod_svids(
        &self,
        request: Request<pb::SubscribePodSvidsRequest>,
    ) -> Result<Response<Self::SubscribePodSvidsStream>, Status> {
        let request = request.into_inner();
        let (sender, receiver) = mpsc::channel(8);
        let current = self.0.current.lock().unwrap().clone();
        sender.send(Ok(current)).await.unwrap();
        self.0
            .subscriptions
            .lock()
            .unwrap()
            .push((request.pod_token, sender));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn fetch_pod_jwt_svids(
        &self,
        _request: Request<pb::FetchPodJwtSvidsRequest>,
    ) -> Result<Response<pb::FetchPodJwtSvidsResponse>, Status> {
        Err(Status::unimplemented("no JWTs in this test"))
    }
}

/// Real SVIDs from a real CA, valid for `ttl` (backdated by `age`).
struct Minter {
    keyset: CaKeyset,
}

impl Minter {
    fn new() -> Self {
        let now = wall_now() - Duration::from_secs(3600);
        Self {
            keyset: CaKeyset::new(CaConfig::new(TrustDomain::new("example.org").unwrap()), now)
                .unwrap(),
        }
    }

    fn update(&self, at: SystemTime, ttl: Duration) -> pb::PodSvidsUpdate {
        let key = PrivateKey::generate(KeyType::EcP256).unwrap();
        let id = SpiffeId::parse("spiffe://example.org/ns/payments/sa/api").unwrap();
        let svid = self
            .keyset
            .mint_x509_svid(&X509SvidParams::new(id, ttl), key.public_key(), at)
            .unwrap();
        pb::PodSvidsUpdate {
            svids: vec![pb::PodSvid {
                spiffe_id: svid.spiffe_id.to_string(),
                cert_chain: svid.cert_chain.iter().map(|c| c.to_vec()).collect(),
                private_key: key.to_pkcs8_der().to_vec(),
                hint: String::new(),
                expires_at_unix: i64::try_from(
                    svid.not_after.duration_since(UNIX_EPOCH).unwrap().as_secs(),
                )
                .unwrap(),
            }],
            bundle: self
                .keyset
                .bundle(at)
                .x509_authorities
                .iter()
                .map(|c| c.to_vec())
                .collect(),
            federated_bundles: HashMap::new(),
        }
    }
}

struct Fixture {
    base: PathBuf,
    _dir: tempfile::TempDir,
    service: NodeService,
    agent: Arc<FakeAgent>,
    target: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Ok(entries) = mountinfo::read() {
            for entry in entries.iter().rev() {
                if entry.mount_point.starts_with(&self.base) {
                    let _ = rustix::mount::unmount(&entry.mount_point, UnmountFlags::DETACH);
                }
            }
        }
    }
}

async fn fixture(first: pb::PodSvidsUpdate) -> Option<Fixture> {
    if !rustix::process::geteuid().is_root() {
        skip("tmpfs mounts need root (run the tests as root)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(dir.path()).unwrap();
    let admin = base.join("admin/admin.sock");
    let agent = Arc::new(FakeAgent::default());
    *agent.current.lock().unwrap() = first;
    let listener = signet_runtime::uds::bind_unix_listener(&admin, 0o600).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DelegatedServer::new(Service(agent.clone())))
            .serve_with_incoming(signet_runtime::h2_authority::unix_incoming(listener)),
    );
    let kubelet = base.join("kubelet");
    let parent = kubelet.join("pods/pod-1/volumes/kubernetes.io~csi/svid");
    std::fs::create_dir_all(&parent).unwrap();
    std::fs::create_dir_all(base.join("run/signet")).unwrap();
    let service = NodeService::new(Arc::new(DriverConfig {
        driver_name: "csi.signet.dev".to_owned(),
        node_id: "node-1".to_owned(),
        socket_dir: base.join("run/signet"),
        kubelet_dir: kubelet,
        files: FilesConfig {
            admin_socket: admin,
            state_dir: base.join("state"),
            pod_token_audience: "signet-csi".to_owned(),
            publish_timeout: Duration::from_secs(10),
        },
    }));
    Some(Fixture {
        target: parent.join("mount"),
        base,
        _dir: dir,
        service,
        agent,
    })
}

fn publish_request(target: &Path, token: &str) -> csi::NodePublishVolumeRequest {
    let context = HashMap::from([
        (EPHEMERAL_KEY, "true".to_owned()),
        ("mode", "files".to_owned()),
        ("csi.storage.k8s.io/pod.name", "web-0".to_owned()),
        ("csi.storage.k8s.io/pod.namespace", "payments".to_owned()),
        ("csi.storage.k8s.io/pod.uid", "pod-1".to_owned()),
        ("csi.storage.k8s.io/serviceAccount.name", "api".to_owned()),
        (
            "csi.storage.k8s.io/serviceAccount.tokens",
            format!(
                r#"{{"signet-csi": {{"token": "{token}", "expirationTimestamp": "2099-01-01T00:00:00Z"}}}}"#
            ),
        ),
    ]);
    csi::NodePublishVolumeRequest {
        volume_id: "csi-pod-1".to_owned(),
        target_path: target.to_str().unwrap().to_owned(),
        volume_capability: Some(csi::VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(
                volume_capability::MountVolume::default(),
            )),
            access_mode: None,
        }),
        readonly: true,
        volume_context: context
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        ..Default::default()
    }
}

async fn condition(f: &Fixture) -> csi::VolumeCondition {
    f.service
        .node_get_volume_stats(Request::new(csi::NodeGetVolumeStatsRequest {
            volume_id: "csi-pod-1".to_owned(),
            volume_path: f.target.to_str().unwrap().to_owned(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .volume_condition
        .unwrap()
}

/// Polls `check` (a driver-side effect no event announces) for 20 s.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Deadline::after(Duration::from_secs(20));
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(!deadline.passed(), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_pod_token_reopens_the_one_subscription() {
    let minter = Minter::new();
    let Some(f) = fixture(minter.update(wall_now(), Duration::from_secs(3600))).await else {
        return;
    };
    f.service
        .node_publish_volume(Request::new(publish_request(&f.target, "aaa.token.one")))
        .await
        .unwrap();
    assert_eq!(f.agent.tokens(), ["aaa.token.one"]);
    assert!(f.target.join("svid.pem").exists());

    // The kubelet re-publishes with the same token: nothing changes.
    f.service
        .node_publish_volume(Request::new(publish_request(&f.target, "aaa.token.one")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(f.agent.tokens(), ["aaa.token.one"]);

    // A fresh token (requiresRepublish): the subscription is reopened with
    // it, and the old stream closed, so one stays.
    f.service
        .node_publish_volume(Request::new(publish_request(&f.target, "bbb.token.two")))
        .await
        .unwrap();
    eventually("the resubscription", async || {
        (f.agent.tokens() == ["aaa.token.one", "bbb.token.two"] && f.agent.open_streams() == 1)
            .then_some(())
    })
    .await;
    let mounts: Vec<_> = mountinfo::read()
        .unwrap()
        .into_iter()
        .filter(|e| e.mount_point == f.target)
        .collect();
    assert_eq!(mounts.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_condition_follows_renewal_failures_and_expiry() {
    let minter = Minter::new();
    let Some(f) = fixture(minter.update(wall_now(), Duration::from_secs(3600))).await else {
        return;
    };
    f.service
        .node_publish_volume(Request::new(publish_request(&f.target, "aaa.token.one")))
        .await
        .unwrap();
    let healthy = condition(&f).await;
    assert!(!healthy.abnormal, "{healthy:?}");

    // The agent goes away: the files stay, the condition says renewal
    // fails; the driver reconnects by itself and all is well again.
    let before = std::fs::read(f.target.join("svid.pem")).unwrap();
    f.agent.fail_streams().await;
    let failing = eventually("an abnormal condition", async || {
        let c = condition(&f).await;
        c.abnormal.then_some(c)
    })
    .await;
    assert!(failing.message.contains("renewal fails"), "{failing:?}");
    assert_eq!(std::fs::read(f.target.join("svid.pem")).unwrap(), before);
    eventually("the reconnection", async || {
        (f.agent.tokens().len() == 2 && f.agent.open_streams() == 1).then_some(())
    })
    .await;
    let recovered = eventually("a normal condition", async || {
        let c = condition(&f).await;
        (!c.abnormal).then_some(c)
    })
    .await;
    assert!(recovered.message.contains("valid until"), "{recovered:?}");

    // An SVID that has expired (the agent could not renew in time).
    let expired = minter.update(
        wall_now() - Duration::from_secs(600),
        Duration::from_secs(120),
    );
    f.agent.push(expired).await;
    let stale = eventually("an expired condition", async || {
        let c = condition(&f).await;
        c.abnormal.then_some(c)
    })
    .await;
    assert!(stale.message.contains("expired"), "{stale:?}");

    // Entitled to nothing any more: the files stay until they expire, and
    // the condition says why.
    f.agent
        .push(minter.update(wall_now(), Duration::from_secs(3600)))
        .await;
    eventually("a normal condition", async || {
        (!condition(&f).await.abnormal).then_some(())
    })
    .await;
    f.agent.push(pb::PodSvidsUpdate::default()).await;
    let revoked = eventually("a revoked condition", async || {
        let c = condition(&f).await;
        c.abnormal.then_some(c)
    })
    .await;
    assert!(
        revoked.message.contains("no longer entitled"),
        "{revoked:?}"
    );
    assert!(f.target.join("svid.pem").exists());
}
