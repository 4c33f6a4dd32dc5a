//! gRPC service names and method paths. Each generated client is pointed at a
//! tower service that answers every call with `Unimplemented` carrying the
//! request's URI path, so the exact path of every RPC is compared against the
//! string the upstream specification implies. A Workload API server is also
//! run over a unix socket and called both through the generated client and
//! through a raw gRPC client with a hand-written path.

// Test helpers outside #[test] functions panic on setup failure too.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use signet_proto::tonic::{self, Code, Request, Response, Status};

/// Answers every request with `Unimplemented` and the request path as message.
#[derive(Clone, Copy, Default)]
struct EchoPath;

impl tower::Service<http::Request<tonic::body::Body>> for EchoPath {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        ready(Ok(Status::unimplemented(req.uri().path()).into_http()))
    }
}

/// The path a call went to, from the `EchoPath` answer.
fn path<T>(result: Result<T, Status>) -> String {
    match result {
        Ok(_) => panic!("EchoPath never answers OK"),
        Err(status) => {
            assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
            status.message().to_owned()
        }
    }
}

#[tokio::test]
async fn workload_api_paths() {
    use signet_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
    use signet_proto::workload::*;
    let mut c = SpiffeWorkloadApiClient::new(EchoPath);
    assert_eq!(
        path(c.fetch_x509svid(X509svidRequest {}).await),
        "/SpiffeWorkloadAPI/FetchX509SVID"
    );
    assert_eq!(
        path(c.fetch_x509_bundles(X509BundlesRequest {}).await),
        "/SpiffeWorkloadAPI/FetchX509Bundles"
    );
    assert_eq!(
        path(c.fetch_jwtsvid(JwtsvidRequest::default()).await),
        "/SpiffeWorkloadAPI/FetchJWTSVID"
    );
    assert_eq!(
        path(c.fetch_jwt_bundles(JwtBundlesRequest {}).await),
        "/SpiffeWorkloadAPI/FetchJWTBundles"
    );
    assert_eq!(
        path(c.validate_jwtsvid(ValidateJwtsvidRequest::default()).await),
        "/SpiffeWorkloadAPI/ValidateJWTSVID"
    );
    assert_eq!(
        spiffe_workload_api_server::SERVICE_NAME,
        "SpiffeWorkloadAPI"
    );
}

#[tokio::test]
async fn csi_paths() {
    use signet_proto::csi::v1::*;
    let mut c = identity_client::IdentityClient::new(EchoPath);
    assert_eq!(
        path(c.get_plugin_info(GetPluginInfoRequest {}).await),
        "/csi.v1.Identity/GetPluginInfo"
    );
    assert_eq!(
        path(
            c.get_plugin_capabilities(GetPluginCapabilitiesRequest {})
                .await
        ),
        "/csi.v1.Identity/GetPluginCapabilities"
    );
    assert_eq!(
        path(c.probe(ProbeRequest {}).await),
        "/csi.v1.Identity/Probe"
    );
    assert_eq!(identity_server::SERVICE_NAME, "csi.v1.Identity");

    let mut c = node_client::NodeClient::new(EchoPath);
    assert_eq!(
        path(c.node_stage_volume(NodeStageVolumeRequest::default()).await),
        "/csi.v1.Node/NodeStageVolume"
    );
    assert_eq!(
        path(
            c.node_unstage_volume(NodeUnstageVolumeRequest::default())
                .await
        ),
        "/csi.v1.Node/NodeUnstageVolume"
    );
    assert_eq!(
        path(
            c.node_publish_volume(NodePublishVolumeRequest::default())
                .await
        ),
        "/csi.v1.Node/NodePublishVolume"
    );
    assert_eq!(
        path(
            c.node_unpublish_volume(NodeUnpublishVolumeRequest::default())
                .await
        ),
        "/csi.v1.Node/NodeUnpublishVolume"
    );
    assert_eq!(
        path(
            c.node_get_volume_stats(NodeGetVolumeStatsRequest::default())
                .await
        ),
        "/csi.v1.Node/NodeGetVolumeStats"
    );
    assert_eq!(
        path(
            c.node_expand_volume(NodeExpandVolumeRequest::default())
                .await
        ),
        "/csi.v1.Node/NodeExpandVolume"
    );
    assert_eq!(
        path(c.node_get_capabilities(NodeGetCapabilitiesRequest {}).await),
        "/csi.v1.Node/NodeGetCapabilities"
    );
    assert_eq!(
        path(c.node_get_info(NodeGetInfoRequest {}).await),
        "/csi.v1.Node/NodeGetInfo"
    );
    assert_eq!(node_server::SERVICE_NAME, "csi.v1.Node");
}

#[tokio::test]
async fn plugin_registration_paths() {
    use signet_proto::pluginregistration::*;
    let mut c = registration_client::RegistrationClient::new(EchoPath);
    assert_eq!(
        path(c.get_info(InfoRequest {}).await),
        "/pluginregistration.Registration/GetInfo"
    );
    assert_eq!(
        path(
            c.notify_registration_status(RegistrationStatus::default())
                .await
        ),
        "/pluginregistration.Registration/NotifyRegistrationStatus"
    );
    assert_eq!(
        registration_server::SERVICE_NAME,
        "pluginregistration.Registration"
    );
}

#[tokio::test]
async fn sds_paths() {
    use signet_proto::envoy::service::discovery::v3::DiscoveryRequest;
    use signet_proto::envoy::service::secret::v3::*;
    let mut c = secret_discovery_service_client::SecretDiscoveryServiceClient::new(EchoPath);
    assert_eq!(
        path(
            c.stream_secrets(tokio_stream::iter(vec![DiscoveryRequest::default()]))
                .await
        ),
        "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets"
    );
    assert_eq!(
        path(c.fetch_secrets(DiscoveryRequest::default()).await),
        "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets"
    );
    assert_eq!(
        secret_discovery_service_server::SERVICE_NAME,
        "envoy.service.secret.v3.SecretDiscoveryService"
    );
}

#[tokio::test]
async fn issuer_and_delegated_paths() {
    use signet_proto::issuer::v1::*;
    let mut c = issuer_client::IssuerClient::new(EchoPath);
    assert_eq!(
        path(c.join(JoinRequest::default()).await),
        "/signet.issuer.v1.Issuer/Join"
    );
    assert_eq!(
        path(c.renew_agent(RenewAgentRequest::default()).await),
        "/signet.issuer.v1.Issuer/RenewAgent"
    );
    assert_eq!(
        path(c.watch_policy(WatchPolicyRequest::default()).await),
        "/signet.issuer.v1.Issuer/WatchPolicy"
    );
    assert_eq!(
        path(c.sign_x509_svids(SignX509SvidsRequest::default()).await),
        "/signet.issuer.v1.Issuer/SignX509Svids"
    );
    assert_eq!(
        path(c.sign_jwt_svids(SignJwtSvidsRequest::default()).await),
        "/signet.issuer.v1.Issuer/SignJwtSvids"
    );
    assert_eq!(issuer_server::SERVICE_NAME, "signet.issuer.v1.Issuer");

    let mut c = delegated_client::DelegatedClient::new(EchoPath);
    assert_eq!(
        path(
            c.subscribe_pod_svids(SubscribePodSvidsRequest::default())
                .await
        ),
        "/signet.issuer.v1.Delegated/SubscribePodSvids"
    );
    assert_eq!(
        path(
            c.fetch_pod_jwt_svids(FetchPodJwtSvidsRequest::default())
                .await
        ),
        "/signet.issuer.v1.Delegated/FetchPodJwtSvids"
    );
    assert_eq!(delegated_server::SERVICE_NAME, "signet.issuer.v1.Delegated");
}

// ------------------------------------------------------------ live server

mod live {
    use super::*;
    use signet_proto::WORKLOAD_API_HEADER;
    use signet_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
    use signet_proto::workload::spiffe_workload_api_server::{
        SpiffeWorkloadApi, SpiffeWorkloadApiServer,
    };
    use signet_proto::workload::*;
    use std::pin::Pin;
    use tokio_stream::Stream;

    type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

    /// A toy Workload API: checks the security header and answers fixed data.
    struct Toy;

    fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
        match req.metadata().get(WORKLOAD_API_HEADER) {
            Some(v) if v == signet_proto::WORKLOAD_API_HEADER_VALUE => Ok(()),
            _ => Err(Status::invalid_argument("security header missing")),
        }
    }

    #[tonic::async_trait]
    impl SpiffeWorkloadApi for Toy {
        type FetchX509SVIDStream = BoxStream<X509svidResponse>;
        type FetchX509BundlesStream = BoxStream<X509BundlesResponse>;
        type FetchJWTBundlesStream = BoxStream<JwtBundlesResponse>;

        async fn fetch_x509svid(
            &self,
            req: Request<X509svidRequest>,
        ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
            check_header(&req)?;
            let msg = X509svidResponse {
                svids: vec![X509svid {
                    spiffe_id: "spiffe://example.org/w".to_owned(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            Ok(Response::new(Box::pin(tokio_stream::iter(vec![Ok(msg)]))))
        }

        async fn fetch_x509_bundles(
            &self,
            req: Request<X509BundlesRequest>,
        ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
            check_header(&req)?;
            Err(Status::unavailable("not in this test"))
        }

        async fn fetch_jwtsvid(
            &self,
            req: Request<JwtsvidRequest>,
        ) -> Result<Response<JwtsvidResponse>, Status> {
            check_header(&req)?;
            let req = req.into_inner();
            Ok(Response::new(JwtsvidResponse {
                svids: vec![Jwtsvid {
                    spiffe_id: req.spiffe_id,
                    svid: req.audience.join(","),
                    hint: String::new(),
                }],
            }))
        }

        async fn fetch_jwt_bundles(
            &self,
            req: Request<JwtBundlesRequest>,
        ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
            check_header(&req)?;
            Err(Status::unavailable("not in this test"))
        }

        async fn validate_jwtsvid(
            &self,
            req: Request<ValidateJwtsvidRequest>,
        ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
            check_header(&req)?;
            Err(Status::invalid_argument("not in this test"))
        }
    }

    fn with_header<T>(msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut().insert(
            WORKLOAD_API_HEADER,
            signet_proto::WORKLOAD_API_HEADER_VALUE.parse().unwrap(),
        );
        req
    }

    #[tokio::test]
    async fn workload_api_over_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(SpiffeWorkloadApiServer::new(Toy))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async {
                        let _ = stop_rx.await;
                    },
                ),
        );

        let channel = tonic::transport::Endpoint::try_from(format!("unix://{}", sock.display()))
            .unwrap()
            .connect()
            .await
            .unwrap();

        // Generated client, server stream.
        let mut client = SpiffeWorkloadApiClient::new(channel.clone());
        let mut stream = client
            .fetch_x509svid(with_header(X509svidRequest {}))
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(first.svids[0].spiffe_id, "spiffe://example.org/w");
        assert!(stream.message().await.unwrap().is_none());

        // Missing security header.
        let err = client
            .fetch_jwtsvid(JwtsvidRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        // A raw client with the path written out by hand reaches the server's
        // FetchJWTSVID handler, so the server routes on the spec's path.
        let mut raw = tonic::client::Grpc::new(channel);
        raw.ready().await.unwrap();
        let resp: Response<JwtsvidResponse> = raw
            .unary(
                with_header(JwtsvidRequest {
                    audience: vec!["a".to_owned(), "b".to_owned()],
                    spiffe_id: "spiffe://example.org/w".to_owned(),
                }),
                http::uri::PathAndQuery::from_static("/SpiffeWorkloadAPI/FetchJWTSVID"),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap();
        let svid = &resp.get_ref().svids[0];
        assert_eq!(svid.svid, "a,b");
        assert_eq!(svid.spiffe_id, "spiffe://example.org/w");

        // An RPC the file does not declare (WIT profile) is Unimplemented.
        raw.ready().await.unwrap();
        let err = raw
            .unary::<_, JwtsvidResponse, _>(
                with_header(JwtsvidRequest::default()),
                http::uri::PathAndQuery::from_static("/SpiffeWorkloadAPI/FetchWITSVID"),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);

        stop_tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
