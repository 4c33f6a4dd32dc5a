//! CSI v1 Identity and Node services.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use signet_proto::csi::v1::{
    self as csi, identity_server::Identity, node_server::Node, node_service_capability,
    volume_capability, volume_usage,
};
use tonic::{Request, Response, Status};

use crate::config::DriverConfig;
use crate::error::CsiError;
use crate::files_mode::FilesVolumes;
use crate::mounts::{self, Published};
use crate::paths;
use crate::pod_info::{self, MountGroup, PodInfo, jwt_audiences, pod_token};
use crate::state::VolumeRecord;

/// `volume_context` key the kubelet sets to "true" for inline ephemeral volumes.
pub const EPHEMERAL_KEY: &str = "csi.storage.k8s.io/ephemeral";
/// Prefix of the keys the kubelet adds (pod info with `podInfoOnMount`).
pub const KUBERNETES_KEY_PREFIX: &str = "csi.storage.k8s.io/";
/// The volume attribute choosing socket or files mode.
pub const MODE_KEY: &str = "mode";
pub use crate::pod_info::JWT_AUDIENCES_KEY;

/// Logs a failed RPC (the kubelet only shows the message in pod events) and
/// converts it to a status.
fn respond<T>(rpc: &'static str, result: Result<T, CsiError>) -> Result<Response<T>, Status> {
    match result {
        Ok(value) => Ok(Response::new(value)),
        Err(error) => {
            let status = Status::from(error);
            tracing::warn!(rpc, code = ?status.code(), message = status.message(), "CSI call failed");
            Err(status)
        }
    }
}

// === impl IdentityService ===

#[derive(Clone, Debug)]
pub struct IdentityService {
    config: Arc<DriverConfig>,
}

impl IdentityService {
    pub fn new(config: Arc<DriverConfig>) -> Self {
        Self { config }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: self.config.driver_name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
            manifest: HashMap::new(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        // Node plugin only: no CONTROLLER_SERVICE, no topology.
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities: Vec::new(),
        }))
    }

    async fn probe(
        &self,
        _request: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        let ready = self.config.socket_dir.is_dir();
        if !ready {
            tracing::info!(socket_dir = %self.config.socket_dir.display(), "probe: agent socket directory missing, not ready");
        }
        Ok(Response::new(csi::ProbeResponse { ready: Some(ready) }))
    }
}

// === impl NodeService ===

#[derive(Clone, Debug)]
pub struct NodeService {
    config: Arc<DriverConfig>,
    /// Serializes mount changes so concurrent retries for one target cannot
    /// race each other into stacked mounts.
    mount_lock: Arc<Mutex<()>>,
    /// Files-mode volumes and their renewal.
    files: Arc<FilesVolumes>,
}

/// What a volume holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeMode {
    /// The agent's Workload API socket directory, bind-mounted read-only.
    Socket,
    /// SVID files in a tmpfs, renewed by the driver.
    Files,
}

/// The checked parts of a NodePublishVolume request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishRequest {
    pub volume_id: String,
    pub target_path: String,
    pub mode: VolumeMode,
}

/// Checks a NodePublishVolume request in the order csi-sanity and the spec
/// expect (ids and paths first).
pub fn check_publish(req: &csi::NodePublishVolumeRequest) -> Result<PublishRequest, CsiError> {
    if req.volume_id.is_empty() {
        return Err(CsiError::Missing("volume_id"));
    }
    if req.target_path.is_empty() {
        return Err(CsiError::Missing("target_path"));
    }
    let Some(capability) = &req.volume_capability else {
        return Err(CsiError::Missing("volume_capability"));
    };
    match &capability.access_type {
        Some(volume_capability::AccessType::Mount(_)) => {}
        Some(volume_capability::AccessType::Block(_)) => return Err(CsiError::BlockAccess),
        None => return Err(CsiError::Missing("volume_capability.mount")),
    }
    if req.volume_context.get(EPHEMERAL_KEY).map(String::as_str) != Some("true") {
        return Err(CsiError::NotEphemeral);
    }
    if !req.readonly {
        return Err(CsiError::NotReadOnly);
    }
    for key in req.volume_context.keys() {
        if key != MODE_KEY && key != JWT_AUDIENCES_KEY && !key.starts_with(KUBERNETES_KEY_PREFIX) {
            return Err(CsiError::UnknownAttribute(key.clone()));
        }
    }
    let mode = match req.volume_context.get(MODE_KEY).map(String::as_str) {
        None | Some("socket") => VolumeMode::Socket,
        Some("files") => VolumeMode::Files,
        Some(other) => return Err(CsiError::UnknownMode(other.to_owned())),
    };
    if mode == VolumeMode::Socket && req.volume_context.contains_key(JWT_AUDIENCES_KEY) {
        return Err(CsiError::FilesOnlyAttribute(JWT_AUDIENCES_KEY.to_owned()));
    }
    paths::check_syntax(&req.target_path)?;
    Ok(PublishRequest {
        volume_id: req.volume_id.clone(),
        target_path: req.target_path.clone(),
        mode,
    })
}

/// The checked parts of a files-mode NodePublishVolume request.
struct FilesRequest {
    pod: PodInfo,
    audiences: Vec<pod_info::Audience>,
    token: Option<pod_info::PodToken>,
    group: Option<MountGroup>,
}

impl FilesRequest {
    fn check(req: &csi::NodePublishVolumeRequest, token_audience: &str) -> Result<Self, CsiError> {
        Ok(Self {
            pod: PodInfo::from_context(&req.volume_context)?,
            audiences: jwt_audiences(&req.volume_context)?,
            token: pod_token(&req.volume_context, token_audience)?,
            group: MountGroup::from_capability(req.volume_capability.as_ref())?,
        })
    }
}

impl NodeService {
    pub fn new(config: Arc<DriverConfig>) -> Self {
        let files = Arc::new(FilesVolumes::new(config.files.clone()));
        Self {
            config,
            mount_lock: Arc::new(Mutex::new(())),
            files,
        }
    }

    /// The files-mode volumes (tests, shutdown).
    pub fn files(&self) -> &Arc<FilesVolumes> {
        &self.files
    }

    /// Resumes renewing the files-mode volumes recorded in the state
    /// directory whose tmpfs is still mounted (a driver restart); records
    /// of volumes that are gone are dropped. Returns how many resumed.
    pub async fn resume_files(&self) -> usize {
        let mut resumed = 0;
        for (path, record) in self.files.state().load_all() {
            let record = match record {
                Ok(record) => record,
                Err(error) => {
                    tracing::warn!(%error, "dropping an unreadable volume record");
                    self.files.state().discard(&path);
                    continue;
                }
            };
            let target = record.target_path.clone();
            let mounted = self
                .blocking(move |config| {
                    let Some(text) = target.to_str() else {
                        return Ok(false);
                    };
                    let resolved = paths::resolve_target(&config.pods_dir(), text)?;
                    Ok(resolved.exists
                        && resolved.path == target
                        && mounts::is_files_mount(&target)?)
                })
                .await
                .unwrap_or(false);
            if mounted {
                tracing::info!(
                    volume_id = record.volume_id,
                    pod = %record.pod,
                    target = %record.target_path.display(),
                    "resuming SVID renewal"
                );
                self.files.start(record, None);
                resumed += 1;
            } else {
                tracing::info!(
                    volume_id = record.volume_id,
                    target = %record.target_path.display(),
                    "dropping the record of a volume no longer mounted"
                );
                if let Err(error) = self.files.state().remove(&record.volume_id) {
                    tracing::warn!(%error, "removing a stale volume record");
                }
            }
        }
        resumed
    }

    /// Runs blocking mount work off the async threads, one at a time.
    async fn blocking<T, F>(&self, work: F) -> Result<T, CsiError>
    where
        T: Send + 'static,
        F: FnOnce(&DriverConfig) -> Result<T, CsiError> + Send + 'static,
    {
        let config = self.config.clone();
        let lock = self.mount_lock.clone();
        tokio::task::spawn_blocking(move || {
            let _guard = lock
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            work(&config)
        })
        .await
        .map_err(|error| CsiError::Internal(format!("mount task failed: {error}")))?
    }

    pub async fn publish(&self, req: &csi::NodePublishVolumeRequest) -> Result<(), CsiError> {
        let checked = check_publish(req)?;
        if checked.mode == VolumeMode::Files {
            let files = FilesRequest::check(req, &self.config.files.pod_token_audience)?;
            return self.publish_files(checked, files).await;
        }
        let outcome = self
            .blocking(move |config| {
                let target = paths::resolve_target(&config.pods_dir(), &checked.target_path)?;
                Ok(mounts::publish_socket(&config.socket_dir, &target.path)?)
            })
            .await?;
        match outcome {
            Published::Mounted => {
                tracing::info!(
                    volume_id = req.volume_id,
                    target = req.target_path,
                    "published agent socket directory"
                );
            }
            Published::AlreadyMounted => {
                tracing::info!(
                    volume_id = req.volume_id,
                    target = req.target_path,
                    "already published"
                );
            }
        }
        Ok(())
    }

    /// Files mode: a tmpfs on the target, filled with the pod's SVIDs
    /// before this returns, and renewed until unpublished.
    async fn publish_files(
        &self,
        checked: PublishRequest,
        request: FilesRequest,
    ) -> Result<(), CsiError> {
        let volume_id = checked.volume_id.clone();
        let _operation = self.files.operation(&volume_id).await;
        let target_path = checked.target_path.clone();
        let target = self
            .blocking(move |config| {
                Ok(paths::resolve_target(&config.pods_dir(), &target_path)?.path)
            })
            .await?;
        let existing = self.files.get(&volume_id);
        if let Some(volume) = &existing
            && volume.record.target_path != target
        {
            return Err(crate::files_mode::FilesError::OtherTarget {
                volume_id,
                existing: volume.record.target_path.clone(),
                requested: target,
            }
            .into());
        }
        let mount_target = target.clone();
        let published = self
            .blocking(move |_| Ok(mounts::publish_tmpfs(&mount_target)?))
            .await?;
        let record = VolumeRecord::new(
            volume_id.clone(),
            target.clone(),
            request.pod,
            request.audiences,
            request.group,
        );
        if let Some(volume) = &existing
            && published == Published::AlreadyMounted
            && volume.record == record
        {
            // A re-publish (kubelet restart, requiresRepublish): hand over
            // the fresh token; the volume already holds its files (written
            // by this process, or before a driver restart).
            volume.offer_token(request.token);
            let has_files = volume.status().written.is_some()
                || std::fs::symlink_metadata(target.join(crate::svid_files::DATA_LINK)).is_ok();
            if has_files {
                tracing::debug!(volume_id, "already published; token refreshed");
                return Ok(());
            }
            volume
                .first_files(self.config.files.publish_timeout)
                .await?;
            return Ok(());
        }
        if let Some(volume) = existing {
            // The tmpfs was replaced, or the request changed: start over,
            // and never with two tasks writing.
            volume.stop().await;
        }
        let volume = self.files.start(record.clone(), request.token);
        match volume.first_files(self.config.files.publish_timeout).await {
            Ok(()) => {
                if let Err(error) = self.files.state().save(&record) {
                    // Renewal goes on; only a driver restart would forget it.
                    tracing::error!(%error, volume_id, "recording the volume failed");
                }
                tracing::info!(
                    volume_id,
                    target = %target.display(),
                    pod = %record.pod,
                    "published SVID files"
                );
                Ok(())
            }
            Err(error) => {
                // The pod must not start without credentials, and nothing
                // half-made stays behind.
                let _ = self.files.forget(&volume_id).await;
                let cleanup = self
                    .blocking(move |_| Ok(mounts::unpublish(&target)?))
                    .await;
                if let Err(cleanup) = cleanup {
                    tracing::warn!(%cleanup, volume_id, "cleaning up after a failed publish");
                }
                Err(error.into())
            }
        }
    }

    pub async fn unpublish(&self, req: &csi::NodeUnpublishVolumeRequest) -> Result<(), CsiError> {
        if req.volume_id.is_empty() {
            return Err(CsiError::Missing("volume_id"));
        }
        if req.target_path.is_empty() {
            return Err(CsiError::Missing("target_path"));
        }
        // Files mode: no renewal may write into the volume once it goes.
        let operation = self.files.operation(&req.volume_id).await;
        self.files.forget(&req.volume_id).await?;
        let target_path = req.target_path.clone();
        self.blocking(move |config| {
            let target = match paths::resolve_target(&config.pods_dir(), &target_path) {
                Ok(target) => target,
                // Nothing can be published under a parent that is gone.
                Err(paths::PathError::ParentMissing { .. }) => return Ok(()),
                Err(error) => return Err(error.into()),
            };
            if target.exists {
                mounts::unpublish(&target.path)?;
            }
            Ok(())
        })
        .await?;
        drop(operation);
        self.files.release_operation(&req.volume_id);
        tracing::info!(
            volume_id = req.volume_id,
            target = req.target_path,
            "unpublished"
        );
        Ok(())
    }

    pub async fn volume_stats(
        &self,
        req: &csi::NodeGetVolumeStatsRequest,
    ) -> Result<csi::NodeGetVolumeStatsResponse, CsiError> {
        if req.volume_id.is_empty() {
            return Err(CsiError::Missing("volume_id"));
        }
        if req.volume_path.is_empty() {
            return Err(CsiError::Missing("volume_path"));
        }
        let volume_id = req.volume_id.clone();
        let volume_path = req.volume_path.clone();
        let files_volume = self.files.get(&volume_id);
        let clock = *self.files.clock();
        self.blocking(move |config| {
            let not_published = || CsiError::NotPublished {
                volume_id: volume_id.clone(),
                path: volume_path.clone(),
            };
            let target = match paths::resolve_target(&config.pods_dir(), &volume_path) {
                Ok(target) if target.exists => target,
                _ => return Err(not_published()),
            };
            if mounts::is_files_mount(&target.path).unwrap_or(false) {
                let condition = match &files_volume {
                    Some(volume) if volume.record.target_path == target.path => {
                        let (abnormal, message) = volume.status().condition(clock.now());
                        csi::VolumeCondition { abnormal, message }
                    }
                    _ => csi::VolumeCondition {
                        abnormal: true,
                        message: "signet-csi is not renewing the SVID files in this volume \
                                  (no record of it); restart the pod"
                            .to_owned(),
                    },
                };
                return usage(&target.path, condition);
            }
            match mounts::inspect(&config.socket_dir, &target.path) {
                Ok(Some(view)) => stats(&target.path, view),
                Ok(None) | Err(_) => Err(not_published()),
            }
        })
        .await
    }
}

/// Byte and inode usage of a published volume, with its condition.
fn usage(
    path: &std::path::Path,
    volume_condition: csi::VolumeCondition,
) -> Result<csi::NodeGetVolumeStatsResponse, CsiError> {
    let vfs = rustix::fs::statvfs(path)
        .map_err(|error| CsiError::Internal(format!("statvfs {}: {error}", path.display())))?;
    let clamp = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    let frsize = vfs.f_frsize.max(1);
    let bytes = csi::VolumeUsage {
        available: clamp(vfs.f_bavail.saturating_mul(frsize)),
        total: clamp(vfs.f_blocks.saturating_mul(frsize)),
        used: clamp(
            vfs.f_blocks
                .saturating_sub(vfs.f_bfree)
                .saturating_mul(frsize),
        ),
        unit: volume_usage::Unit::Bytes as i32,
    };
    let inodes = csi::VolumeUsage {
        available: clamp(vfs.f_favail),
        total: clamp(vfs.f_files),
        used: clamp(vfs.f_files.saturating_sub(vfs.f_ffree)),
        unit: volume_usage::Unit::Inodes as i32,
    };
    Ok(csi::NodeGetVolumeStatsResponse {
        usage: vec![bytes, inodes],
        volume_condition: Some(volume_condition),
    })
}

/// Usage and condition of a published socket-mode volume.
fn stats(
    path: &std::path::Path,
    view: mounts::MountView,
) -> Result<csi::NodeGetVolumeStatsResponse, CsiError> {
    let has_socket = std::fs::read_dir(path)
        .map(|entries| {
            entries.flatten().any(|entry| {
                use std::os::unix::fs::FileTypeExt;
                entry.file_type().map(|t| t.is_socket()).unwrap_or(false)
            })
        })
        .unwrap_or(false);
    let volume_condition = if !view.is_socket_dir {
        csi::VolumeCondition {
            abnormal: true,
            message: "the volume no longer shows the agent's socket directory (was it deleted \
                      and recreated?); restart the pod to mount the current one"
                .to_owned(),
        }
    } else if !view.read_only {
        csi::VolumeCondition {
            abnormal: true,
            message: "the agent socket directory is mounted writable; unpublish and publish again"
                .to_owned(),
        }
    } else if !has_socket {
        csi::VolumeCondition {
            abnormal: true,
            message:
                "the agent socket directory holds no socket; is signet-agent running on this node?"
                    .to_owned(),
        }
    } else {
        csi::VolumeCondition {
            abnormal: false,
            message: "the agent socket directory is mounted read-only".to_owned(),
        }
    };
    usage(path, volume_condition)
}

fn rpc_capability(kind: node_service_capability::rpc::Type) -> csi::NodeServiceCapability {
    csi::NodeServiceCapability {
        r#type: Some(node_service_capability::Type::Rpc(
            node_service_capability::Rpc {
                r#type: kind as i32,
            },
        )),
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        _request: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        respond(
            "NodeStageVolume",
            Err(CsiError::Unimplemented("NodeStageVolume")),
        )
    }

    async fn node_unstage_volume(
        &self,
        _request: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        respond(
            "NodeUnstageVolume",
            Err(CsiError::Unimplemented("NodeUnstageVolume")),
        )
    }

    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let result = self.publish(request.get_ref()).await;
        respond(
            "NodePublishVolume",
            result.map(|()| csi::NodePublishVolumeResponse {}),
        )
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let result = self.unpublish(request.get_ref()).await;
        respond(
            "NodeUnpublishVolume",
            result.map(|()| csi::NodeUnpublishVolumeResponse {}),
        )
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        let result = self.volume_stats(request.get_ref()).await;
        respond("NodeGetVolumeStats", result)
    }

    async fn node_expand_volume(
        &self,
        _request: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        respond(
            "NodeExpandVolume",
            Err(CsiError::Unimplemented("NodeExpandVolume")),
        )
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::rpc::Type;
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities: vec![
                rpc_capability(Type::GetVolumeStats),
                rpc_capability(Type::VolumeCondition),
                // The kubelet then passes the pod's fsGroup as
                // volume_mount_group, which files mode gives the keys to.
                rpc_capability(Type::VolumeMountGroup),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.config.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}
