//! Files mode: one renewal task per published volume, following the pod's
//! SVID stream from the agent's delegated API and rewriting the volume's
//! files (see [`crate::svid_files`]) whenever it changes, plus its JWT-SVIDs
//! at half their remaining life, for as long as the volume is published.
//!
//! The task never gives up: a broken stream is reopened with backoff while
//! the files already written stay in place, and the volume's condition
//! (NodeGetVolumeStats) turns abnormal until a renewal succeeds again. A new
//! pod token from a re-publish (`requiresRepublish`) reopens the stream with
//! it; the old stream is dropped only once the new one is open.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use signet_proto::issuer::v1 as pb;
use signet_runtime::clock::Clock;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::agent_client::{AgentClient, AgentError};
use crate::pod_info::{Audience, PodToken};
use crate::state::{StateDir, StateError, VolumeRecord};
use crate::svid_files;

/// How long stopping a renewal task may take (a write in progress finishes).
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What files mode needs besides the socket-mode configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilesConfig {
    /// The agent's delegated API socket.
    pub admin_socket: PathBuf,
    /// Where published volumes are recorded.
    pub state_dir: PathBuf,
    /// The `tokenRequests` audience whose token is passed to the agent.
    pub pod_token_audience: String,
    /// How long a first publish waits for the pod's SVIDs.
    pub publish_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error(
        "pod {pod} is entitled to no SPIFFE identity: no WorkloadIdentity of the signet \
         policy (with a Role allowing it) matches the pod; change the policy or remove the \
         volume"
    )]
    NoIdentity { pod: String },
    #[error("signet-agent refused the identity of pod {pod}: {message}")]
    Refused { pod: String, message: String },
    #[error(
        "no SVID for pod {pod} within {timeout:?}; the pod must not start without its \
         credentials: {reason}"
    )]
    Timeout {
        pod: String,
        timeout: Duration,
        reason: String,
    },
    #[error("volume {volume_id} is already published at {existing:?}, not at {requested:?}")]
    OtherTarget {
        volume_id: String,
        existing: PathBuf,
        requested: PathBuf,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

/// Why the last renewal attempt failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    /// The agent refused (rather than could not be reached): retrying
    /// without a policy change will not help.
    pub refused: bool,
}

/// What the volume holds now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenSet {
    /// The default SVID's ID.
    pub spiffe_id: String,
    /// When the written default SVID expires.
    pub svid_expires_at: SystemTime,
    /// When the first written JWT-SVID expires, if any was asked for.
    pub jwt_expires_at: Option<SystemTime>,
    /// Every asked-for audience has a JWT-SVID in the files.
    pub complete: bool,
    pub written_at: SystemTime,
}

/// The state of a volume's renewal, for publish and the volume condition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VolumeStatus {
    pub written: Option<WrittenSet>,
    /// The last attempt's failure, cleared by the next success.
    pub failure: Option<Failure>,
    /// The agent's last word: the pod is entitled to no identity.
    pub not_entitled: bool,
}

impl VolumeStatus {
    /// (abnormal, message) for NodeGetVolumeStats' volume condition.
    pub fn condition(&self, now: SystemTime) -> (bool, String) {
        let expired = |at: SystemTime| at <= now;
        match &self.written {
            None => (
                true,
                match &self.failure {
                    Some(failure) => format!("no SVID written yet: {}", failure.message),
                    None => "no SVID written yet".to_owned(),
                },
            ),
            Some(written) if expired(written.svid_expires_at) => (
                true,
                format!(
                    "the SVID in the volume ({}) expired at {}{}",
                    written.spiffe_id,
                    humantime::format_rfc3339_seconds(written.svid_expires_at),
                    self.failure
                        .as_ref()
                        .map(|f| format!("; renewal fails: {}", f.message))
                        .unwrap_or_default()
                ),
            ),
            Some(written) if written.jwt_expires_at.is_some_and(expired) => {
                (true, "a JWT-SVID in the volume has expired".to_owned())
            }
            Some(_) if self.not_entitled => (
                true,
                "the pod is no longer entitled to an identity; the files keep the last SVID \
                 until it expires"
                    .to_owned(),
            ),
            Some(written) => match &self.failure {
                Some(failure) => (
                    true,
                    format!(
                        "renewal fails ({}); the files hold {} until {}",
                        failure.message,
                        written.spiffe_id,
                        humantime::format_rfc3339_seconds(written.svid_expires_at)
                    ),
                ),
                None => (
                    false,
                    format!(
                        "{} valid until {}, renewed before expiry",
                        written.spiffe_id,
                        humantime::format_rfc3339_seconds(written.svid_expires_at)
                    ),
                ),
            },
        }
    }
}

/// One published volume and its renewal task.
pub struct Volume {
    pub record: VolumeRecord,
    token: watch::Sender<Option<PodToken>>,
    status: watch::Receiver<VolumeStatus>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Volume {
    pub fn status(&self) -> VolumeStatus {
        self.status.borrow().clone()
    }

    /// Hands a fresher pod token to the renewal (a re-publish); the same
    /// token again changes nothing.
    pub fn offer_token(&self, token: Option<PodToken>) {
        let Some(token) = token else { return };
        self.token.send_if_modified(|held| {
            if held.as_ref() == Some(&token) {
                false
            } else {
                *held = Some(token);
                true
            }
        });
    }

    /// Stops the renewal and waits for it (a write in progress completes),
    /// so nothing writes into the volume afterwards.
    pub async fn stop(&self) {
        self.stop.send_replace(true);
        let task = match self.task.lock() {
            Ok(mut task) => task.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(task) = task
            && tokio::time::timeout(STOP_TIMEOUT, task).await.is_err()
        {
            tracing::warn!(
                volume_id = self.record.volume_id,
                "renewal task did not stop in time"
            );
        }
    }

    /// Waits until the volume holds a complete first set of files, the
    /// agent says no, or `timeout` passes.
    pub async fn first_files(&self, timeout: Duration) -> Result<(), FilesError> {
        let pod = self.record.pod.to_string();
        let mut status = self.status.clone();
        let settled = tokio::time::timeout(
            timeout,
            status.wait_for(|s| {
                s.written.as_ref().is_some_and(|w| w.complete)
                    || s.not_entitled
                    || s.failure.as_ref().is_some_and(|f| f.refused)
            }),
        )
        .await;
        let current = self.status();
        match settled {
            Ok(Ok(_)) if current.written.as_ref().is_some_and(|w| w.complete) => Ok(()),
            Ok(Ok(_)) if current.not_entitled => Err(FilesError::NoIdentity { pod }),
            Ok(Ok(_)) => Err(FilesError::Refused {
                pod,
                message: current.failure.map(|f| f.message).unwrap_or_default(),
            }),
            Ok(Err(_)) | Err(_) => Err(FilesError::Timeout {
                pod,
                timeout,
                reason: current
                    .failure
                    .map(|f| f.message)
                    .unwrap_or_else(|| "the agent has not answered yet".into()),
            }),
        }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        // A dropped manager (driver shutdown, tests) must not leave tasks.
        self.stop.send_replace(true);
    }
}

/// Every files-mode volume this driver renews.
pub struct FilesVolumes {
    config: FilesConfig,
    agent: AgentClient,
    state: StateDir,
    volumes: Mutex<HashMap<String, Arc<Volume>>>,
    /// The time source for expiry and renewal (pausable in tests).
    clock: Clock,
    /// One publish or unpublish per volume at a time.
    operations: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for FilesVolumes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilesVolumes")
            .field("config", &self.config)
            .field("volumes", &self.lock_volumes().len())
            .finish()
    }
}

impl FilesVolumes {
    pub fn new(config: FilesConfig) -> Self {
        Self {
            agent: AgentClient::new(&config.admin_socket),
            state: StateDir::new(&config.state_dir),
            config,
            volumes: Mutex::new(HashMap::new()),
            clock: Clock::new(),
            operations: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &FilesConfig {
        &self.config
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn state(&self) -> &StateDir {
        &self.state
    }

    fn lock_volumes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Volume>>> {
        match self.volumes.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Serializes operations on one volume ID (the kubelet may retry a
    /// publish while the first still waits for SVIDs).
    pub async fn operation(&self, volume_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut operations = match self.operations.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            operations
                .entry(volume_id.to_owned())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
                .clone()
        };
        lock.lock_owned().await
    }

    pub fn get(&self, volume_id: &str) -> Option<Arc<Volume>> {
        self.lock_volumes().get(volume_id).cloned()
    }

    /// Starts renewing `record`'s volume (replacing any task it had).
    pub fn start(&self, record: VolumeRecord, token: Option<PodToken>) -> Arc<Volume> {
        let (token_tx, token_rx) = watch::channel(token);
        let (status_tx, status_rx) = watch::channel(VolumeStatus::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let renewal = Renewal {
            record: record.clone(),
            agent: self.agent.clone(),
            clock: self.clock,
            token: token_rx,
            status: status_tx,
            stop: stop_rx,
        };
        let task = tokio::spawn(renewal.run());
        let volume = Arc::new(Volume {
            record,
            token: token_tx,
            status: status_rx,
            stop: stop_tx,
            task: Mutex::new(Some(task)),
        });
        let previous = self
            .lock_volumes()
            .insert(volume.record.volume_id.clone(), volume.clone());
        if let Some(previous) = previous {
            previous.stop.send_replace(true);
        }
        volume
    }

    /// Stops renewing the volume and forgets it (memory and state dir).
    pub async fn forget(&self, volume_id: &str) -> Result<(), FilesError> {
        let volume = self.lock_volumes().remove(volume_id);
        if let Some(volume) = volume {
            volume.stop().await;
        }
        self.state.remove(volume_id)?;
        Ok(())
    }

    /// Drops the operation lock of a volume that is gone, unless another
    /// call holds or waits for it.
    pub fn release_operation(&self, volume_id: &str) {
        let mut operations = match self.operations.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if operations
            .get(volume_id)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            operations.remove(volume_id);
        }
    }

    /// Volumes being renewed, by ID.
    pub fn volume_ids(&self) -> Vec<String> {
        self.lock_volumes().keys().cloned().collect()
    }

    /// Stops every renewal task without touching the volumes (shutdown:
    /// the files stay, a restarted driver resumes).
    pub async fn stop_all(&self) {
        let volumes: Vec<Arc<Volume>> = self.lock_volumes().values().cloned().collect();
        for volume in volumes {
            volume.stop().await;
        }
    }
}

// === the renewal task ===

struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: INITIAL_BACKOFF,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        delay
    }

    fn reset(&mut self) {
        self.next = INITIAL_BACKOFF;
    }
}

struct Jwt {
    token: Zeroizing<String>,
    expires_at: SystemTime,
    refresh_at: Instant,
}

struct Renewal {
    record: VolumeRecord,
    agent: AgentClient,
    clock: Clock,
    token: watch::Receiver<Option<PodToken>>,
    status: watch::Sender<VolumeStatus>,
    stop: watch::Receiver<bool>,
}

enum Event {
    Stop,
    Token,
    Message(Option<Result<pb::PodSvidsUpdate, tonic::Status>>),
    /// A JWT-SVID's refresh, or a retry of a failed write.
    Due,
    RetryDue,
}

async fn next_message(
    stream: &mut Option<tonic::Streaming<pb::PodSvidsUpdate>>,
) -> Option<Result<pb::PodSvidsUpdate, tonic::Status>> {
    match stream {
        Some(stream) => stream.message().await.transpose(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn from_unix(seconds: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

impl Renewal {
    fn failed(&self, error: &AgentError) {
        let refused = matches!(
            error,
            AgentError::Refused {
                code: tonic::Code::PermissionDenied
                    | tonic::Code::InvalidArgument
                    | tonic::Code::NotFound
                    | tonic::Code::FailedPrecondition,
                ..
            }
        );
        self.fail(error.to_string(), refused);
    }

    fn fail(&self, message: String, refused: bool) {
        tracing::warn!(
            volume_id = self.record.volume_id,
            pod = %self.record.pod,
            %message,
            "SVID renewal failed"
        );
        self.status.send_modify(|status| {
            status.failure = Some(Failure { message, refused });
        });
    }

    /// Opens the pod's stream with the current token; `None` when the
    /// volume is being stopped meanwhile (an unreachable agent must not
    /// hold up an unpublish).
    async fn subscribe(
        &mut self,
    ) -> Option<Result<tonic::Streaming<pb::PodSvidsUpdate>, AgentError>> {
        let token = self.token.borrow_and_update().clone();
        let opening = self.agent.subscribe(&self.record.pod, token.as_ref());
        tokio::select! {
            opened = opening => Some(opened),
            _ = self.stop.wait_for(|stop| *stop) => None,
        }
    }

    async fn run(mut self) {
        let mut backoff = Backoff::new();
        let mut stream = None;
        let mut retry_at = Some(Instant::now());
        let mut latest: Option<pb::PodSvidsUpdate> = None;
        let mut jwts: BTreeMap<Audience, Jwt> = BTreeMap::new();
        // Set when writing the files failed: try again then.
        let mut rewrite_at: Option<Instant> = None;
        loop {
            if stream.is_none() && retry_at.is_some_and(|at| at <= Instant::now()) {
                let Some(opened) = self.subscribe().await else {
                    return;
                };
                match opened {
                    Ok(opened) => {
                        stream = Some(opened);
                        retry_at = None;
                    }
                    Err(error) => {
                        self.failed(&error);
                        retry_at = Some(Instant::now() + backoff.next_delay());
                    }
                }
            }
            let due = if latest.is_some() {
                jwts.values()
                    .map(|jwt| jwt.refresh_at)
                    .chain(rewrite_at)
                    .min()
            } else {
                None
            };
            let event = tokio::select! {
                changed = self.stop.changed() => match changed {
                    Ok(()) if !*self.stop.borrow() => continue,
                    _ => Event::Stop,
                },
                changed = self.token.changed() => match changed {
                    Ok(()) => Event::Token,
                    Err(_) => Event::Stop,
                },
                message = next_message(&mut stream) => Event::Message(message),
                () = sleep_until(due) => Event::Due,
                () = sleep_until(retry_at) => Event::RetryDue,
            };
            match event {
                Event::Stop => return,
                Event::Token => match self.subscribe().await {
                    None => return,
                    // The old stream goes only now that the new one is open.
                    Some(Ok(opened)) => {
                        stream = Some(opened);
                        retry_at = None;
                    }
                    Some(Err(error)) => self.failed(&error),
                },
                Event::Message(Some(Ok(update))) => {
                    backoff.reset();
                    if update.svids.is_empty() {
                        tracing::info!(
                            volume_id = self.record.volume_id,
                            pod = %self.record.pod,
                            "the agent says the pod is entitled to no identity"
                        );
                        self.status.send_modify(|status| {
                            status.not_entitled = true;
                            status.failure = None;
                        });
                        continue;
                    }
                    // A new SVID may be a new identity: fresh JWTs too.
                    self.fetch_jwts(&update, &mut jwts, true).await;
                    rewrite_at = (!self.write(&update, &jwts).await)
                        .then(|| Instant::now() + backoff.next_delay());
                    latest = Some(update);
                }
                Event::Message(ended) => {
                    let message = match ended {
                        Some(Err(status)) => self.agent.stream_error(status).to_string(),
                        _ => "the agent closed the SVID stream".to_owned(),
                    };
                    self.fail(message, false);
                    stream = None;
                    retry_at = Some(Instant::now() + backoff.next_delay());
                }
                Event::Due => {
                    if let Some(update) = &latest {
                        self.fetch_jwts(update, &mut jwts, false).await;
                        rewrite_at = (!self.write(update, &jwts).await)
                            .then(|| Instant::now() + backoff.next_delay());
                    }
                }
                Event::RetryDue => {}
            }
        }
    }

    /// Fetches the JWT-SVIDs that are due (all of them when `all`). A
    /// failed fetch keeps the old token while it is valid and retries soon.
    async fn fetch_jwts(
        &mut self,
        update: &pb::PodSvidsUpdate,
        jwts: &mut BTreeMap<Audience, Jwt>,
        all: bool,
    ) {
        let now = Instant::now();
        let token = self.token.borrow().clone();
        for audience in &self.record.jwt_audiences {
            let due = all || jwts.get(audience).is_none_or(|jwt| jwt.refresh_at <= now);
            if !due {
                continue;
            }
            match self
                .agent
                .fetch_jwt(&self.record.pod, audience, token.as_ref())
                .await
            {
                Ok(jwt) => {
                    let expires_at = from_unix(jwt.expires_at_unix);
                    let left = expires_at
                        .duration_since(self.clock.now())
                        .unwrap_or(Duration::ZERO);
                    if jwt.spiffe_id
                        != update
                            .svids
                            .first()
                            .map(|s| s.spiffe_id.as_str())
                            .unwrap_or_default()
                    {
                        tracing::debug!(
                            jwt = jwt.spiffe_id,
                            "the JWT-SVID names another identity than the default X.509-SVID"
                        );
                    }
                    jwts.insert(
                        audience.clone(),
                        Jwt {
                            token: Zeroizing::new(jwt.token),
                            expires_at,
                            // Half the remaining life, and not in a hot loop.
                            refresh_at: now + (left / 2).max(Duration::from_secs(5)),
                        },
                    );
                }
                Err(error) => {
                    self.failed(&error);
                    match jwts.get_mut(audience) {
                        Some(jwt) => jwt.refresh_at = now + INITIAL_BACKOFF * 5,
                        None => {
                            jwts.insert(
                                audience.clone(),
                                Jwt {
                                    token: Zeroizing::new(String::new()),
                                    expires_at: UNIX_EPOCH,
                                    refresh_at: now + INITIAL_BACKOFF * 5,
                                },
                            );
                        }
                    }
                }
            }
        }
    }

    /// Writes the files for `update` and the valid JWTs, off the async
    /// threads, and reports the outcome in the status; false when nothing
    /// could be written.
    async fn write(&self, update: &pb::PodSvidsUpdate, jwts: &BTreeMap<Audience, Jwt>) -> bool {
        let now = self.clock.now();
        let valid: Vec<(Audience, Zeroizing<String>)> = jwts
            .iter()
            .filter(|(_, jwt)| !jwt.token.is_empty() && jwt.expires_at > now)
            .map(|(audience, jwt)| (audience.clone(), jwt.token.clone()))
            .collect();
        let complete = valid.len() == self.record.jwt_audiences.len();
        let jwt_expires_at = jwts
            .values()
            .filter(|jwt| !jwt.token.is_empty())
            .map(|jwt| jwt.expires_at)
            .min();
        let Some(default) = update.svids.first() else {
            return true;
        };
        let written = WrittenSet {
            spiffe_id: default.spiffe_id.clone(),
            svid_expires_at: from_unix(default.expires_at_unix),
            jwt_expires_at,
            complete,
            written_at: now,
        };
        let set = match svid_files::render(update, &valid) {
            Ok(set) => set,
            Err(error) => {
                self.fail(error.to_string(), false);
                return false;
            }
        };
        let target = self.record.target_path.clone();
        let group = self.record.mount_group;
        let outcome =
            tokio::task::spawn_blocking(move || svid_files::write_set(&target, &set, group, now))
                .await;
        match outcome {
            Ok(Ok(())) => {
                tracing::info!(
                    volume_id = self.record.volume_id,
                    pod = %self.record.pod,
                    spiffe_id = written.spiffe_id,
                    expires = %humantime::format_rfc3339_seconds(written.svid_expires_at),
                    jwts = valid.len(),
                    "SVID files written"
                );
                let clean = complete;
                self.status.send_modify(|status| {
                    status.written = Some(written);
                    status.not_entitled = false;
                    if clean {
                        status.failure = None;
                    }
                });
                true
            }
            Ok(Err(error)) => {
                self.fail(error.to_string(), false);
                false
            }
            Err(error) => {
                self.fail(format!("writing task failed: {error}"), false);
                false
            }
        }
    }
}
