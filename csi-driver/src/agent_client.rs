//! The client of signet-agent's delegated API on its admin socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use signet_proto::issuer::v1 as pb;
use signet_proto::issuer::v1::delegated_client::DelegatedClient;
use tonic::transport::Channel;

use crate::pod_info::{Audience, PodInfo, PodToken};

/// Gives up on one FetchPodJwtSvids call after this long.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "the signet-agent delegated API at {socket} did not answer ({message}); \
         is signet-agent running on this node with admin_listen at that path \
         (--agent-admin-socket)?"
    )]
    Unreachable { socket: PathBuf, message: String },
    #[error("signet-agent refused: {code:?}: {message}")]
    Refused { code: tonic::Code, message: String },
    #[error("signet-agent issued no JWT-SVID for audience {0:?}")]
    NoJwt(String),
}

/// One shared HTTP/2 connection to the agent, made on first use and
/// re-made by tonic after the agent restarts.
#[derive(Clone, Debug)]
pub struct AgentClient {
    socket: PathBuf,
    channel: Channel,
}

impl AgentClient {
    pub fn new(socket: &Path) -> Self {
        let path = socket.to_owned();
        // The URI is a placeholder: the connector ignores it.
        let channel = tonic::transport::Endpoint::from_static("http://localhost")
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(tower::service_fn(move |_: tonic::codegen::http::Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }));
        Self {
            socket: socket.to_owned(),
            channel,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn error(&self, status: tonic::Status) -> AgentError {
        // A status made on this side (connection refused, no socket) carries
        // the transport error as its source; the agent's own answers do not.
        match std::error::Error::source(&status) {
            Some(source) => AgentError::Unreachable {
                socket: self.socket.clone(),
                message: format!("{}: {source}", status.message()),
            },
            None => AgentError::Refused {
                code: status.code(),
                message: status.message().to_owned(),
            },
        }
    }

    /// Opens the pod's SVID stream: the current state first, then every
    /// change.
    pub async fn subscribe(
        &self,
        pod: &PodInfo,
        token: Option<&PodToken>,
    ) -> Result<tonic::Streaming<pb::PodSvidsUpdate>, AgentError> {
        let request = pb::SubscribePodSvidsRequest {
            pod_uid: pod.uid.clone(),
            pod_namespace: pod.namespace.clone(),
            pod_name: pod.name.clone(),
            service_account: pod.service_account.clone(),
            pod_token: token.map(|t| t.as_str().to_owned()).unwrap_or_default(),
        };
        DelegatedClient::new(self.channel.clone())
            .subscribe_pod_svids(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| self.error(status))
    }

    /// The pod's default JWT-SVID for `audience`.
    pub async fn fetch_jwt(
        &self,
        pod: &PodInfo,
        audience: &Audience,
        token: Option<&PodToken>,
    ) -> Result<pb::JwtSvid, AgentError> {
        let request = pb::FetchPodJwtSvidsRequest {
            pod_uid: pod.uid.clone(),
            audience: vec![audience.as_str().to_owned()],
            pod_token: token.map(|t| t.as_str().to_owned()).unwrap_or_default(),
        };
        let mut client = DelegatedClient::new(self.channel.clone());
        let response = tokio::time::timeout(CALL_TIMEOUT, client.fetch_pod_jwt_svids(request))
            .await
            .map_err(|_| AgentError::Unreachable {
                socket: self.socket.clone(),
                message: "FetchPodJwtSvids timed out".into(),
            })?
            .map_err(|status| self.error(status))?;
        response
            .into_inner()
            .svids
            .into_iter()
            .next()
            .ok_or_else(|| AgentError::NoJwt(audience.as_str().to_owned()))
    }

    /// Turns a stream message error into an [`AgentError`].
    pub fn stream_error(&self, status: tonic::Status) -> AgentError {
        self.error(status)
    }
}
