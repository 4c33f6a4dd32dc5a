//! Registering with the kubelet without a node-driver-registrar sidecar.
//!
//! The kubelet's plugin watcher finds sockets in
//! `<kubelet-dir>/plugins_registry/`, calls `GetInfo` to learn the driver's
//! name and CSI endpoint, and reports the outcome with
//! `NotifyRegistrationStatus`. A restarted kubelet scans the directory again,
//! so keeping the socket in place is all re-registration takes; if the socket
//! file disappears (the directory was cleaned), it is bound again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use signet_proto::pluginregistration::registration_server::{Registration, RegistrationServer};
use signet_proto::pluginregistration::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
};
use tonic::{Request, Response, Status};

/// The plugin type the kubelet routes to its CSI plugin handler.
const CSI_PLUGIN_TYPE: &str = "CSIPlugin";
/// CSI spec versions this driver implements.
const SUPPORTED_VERSIONS: &[&str] = &["1.0.0"];
/// How often the socket's presence is checked.
const CHECK_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error("binding the kubelet registration socket: {0}")]
    Bind(#[from] signet_runtime::uds::UdsError),
    #[error("serving the kubelet registration socket: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// What the kubelet is told.
#[derive(Clone, Debug)]
pub struct RegistrationInfo {
    pub driver_name: String,
    /// The CSI socket's path as the kubelet sees it.
    pub endpoint: PathBuf,
}

/// `<kubelet-dir>/plugins_registry/<driver>-reg.sock`, the name
/// node-driver-registrar uses.
pub fn registration_socket(kubelet_dir: &Path, driver_name: &str) -> PathBuf {
    kubelet_dir
        .join("plugins_registry")
        .join(format!("{driver_name}-reg.sock"))
}

#[derive(Clone)]
struct RegistrationService {
    info: RegistrationInfo,
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(
        &self,
        _request: Request<InfoRequest>,
    ) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            r#type: CSI_PLUGIN_TYPE.to_owned(),
            name: self.info.driver_name.clone(),
            endpoint: self.info.endpoint.display().to_string(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            tracing::info!(
                driver = self.info.driver_name,
                "registered with the kubelet"
            );
        } else {
            tracing::error!(
                driver = self.info.driver_name,
                error = status.error,
                "the kubelet refused the registration"
            );
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

/// Serves the registration socket at `socket` until `shutdown` resolves,
/// binding it again whenever the file disappears.
pub async fn serve(
    socket: PathBuf,
    info: RegistrationInfo,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), RegistrationError> {
    tokio::pin!(shutdown);
    let service = RegistrationService { info };
    loop {
        if let Some(parent) = socket.parent() {
            // The kubelet creates the directory; a driver started first makes it.
            let _ = std::fs::create_dir_all(parent);
        }
        // Only the kubelet (root) talks to it.
        let listener = signet_runtime::uds::bind_unix_listener(&socket, 0o600)?;
        tracing::info!(socket = %socket.display(), "kubelet registration socket ready");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(service.clone()))
            // The kubelet's gRPC client sends the socket path as :authority.
            .serve_with_incoming_shutdown(
                signet_runtime::h2_authority::unix_incoming(listener),
                async move {
                    let _ = stopped.await;
                },
            );
        tokio::pin!(server);
        let mut check = tokio::time::interval(CHECK_INTERVAL);
        check.tick().await;
        let rebind = loop {
            tokio::select! {
                result = &mut server => {
                    result?;
                    break false;
                }
                () = &mut shutdown => {
                    let _ = stop.send(());
                    let _ = server.await;
                    signet_runtime::uds::remove_socket(&socket);
                    return Ok(());
                }
                _ = check.tick() => {
                    if !socket.exists() {
                        tracing::warn!(socket = %socket.display(), "registration socket removed; binding it again");
                        let _ = stop.send(());
                        break true;
                    }
                }
            }
        };
        if rebind {
            let _ = server.await;
            continue;
        }
        return Ok(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signet_proto::pluginregistration::registration_client::RegistrationClient;

    async fn client(socket: &Path) -> RegistrationClient<tonic::transport::Channel> {
        let socket = socket.to_owned();
        let channel = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .unwrap();
        RegistrationClient::new(channel)
    }

    async fn wait_for(socket: &Path) {
        for _ in 0..500 {
            if socket.exists() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} never appeared", socket.display());
    }

    #[tokio::test]
    async fn tells_the_kubelet_the_driver_and_endpoint_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let socket = registration_socket(dir.path(), "csi.signet.dev");
        assert!(socket.ends_with("plugins_registry/csi.signet.dev-reg.sock"));
        let info = RegistrationInfo {
            driver_name: "csi.signet.dev".into(),
            endpoint: "/var/lib/kubelet/plugins/csi.signet.dev/csi.sock".into(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(socket.clone(), info, async move {
            let _ = stopped.await;
        }));
        wait_for(&socket).await;
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let mut client = client(&socket).await;
        let plugin = client.get_info(InfoRequest {}).await.unwrap().into_inner();
        assert_eq!(plugin.r#type, "CSIPlugin");
        assert_eq!(plugin.name, "csi.signet.dev");
        assert_eq!(
            plugin.endpoint,
            "/var/lib/kubelet/plugins/csi.signet.dev/csi.sock"
        );
        assert_eq!(plugin.supported_versions, ["1.0.0"]);
        client
            .notify_registration_status(RegistrationStatus {
                plugin_registered: false,
                error: "version mismatch".into(),
            })
            .await
            .unwrap();
        drop(client);

        let _ = stop.send(());
        task.await.unwrap().unwrap();
        assert!(!socket.exists(), "the socket is removed on shutdown");
    }
}
