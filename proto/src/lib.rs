//! Protocol buffers and generated gRPC code for Signet: the SPIFFE Workload
//! API, the Envoy Secret Discovery Service (v3 subset), CSI v1 (Identity and
//! Node), kubelet plugin registration and Signet's own issuer API.
//!
//! The `.proto` sources live in `protos/` and are compiled at build time with
//! protox, so no `protoc` is needed. Every service has both a server
//! (`<service>_server`) and a client (`<service>_client`) module.
//!
//! Use the re-exported [`prost`], [`prost_types`] and [`tonic`] so that all
//! crates agree on one version of each.

pub use prost;
pub use prost_types;
pub use tonic;

/// gRPC metadata key every SPIFFE Workload API call must carry with value `"true"`.
pub const WORKLOAD_API_HEADER: &str = "workload.spiffe.io";

/// Value of [`WORKLOAD_API_HEADER`].
pub const WORKLOAD_API_HEADER_VALUE: &str = "true";

/// `google.protobuf.Any` type URL of an SDS resource
/// ([`envoy::extensions::transport_sockets::tls::v3::Secret`]).
pub const SDS_SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// `google.protobuf.Any` type URL of
/// [`envoy::extensions::transport_sockets::tls::v3::SpiffeCertValidatorConfig`],
/// the typed config of the `envoy.tls.cert_validator.spiffe` validator.
pub const SPIFFE_CERT_VALIDATOR_CONFIG_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig";

/// Extension name Envoy uses for the SPIFFE certificate validator.
pub const SPIFFE_CERT_VALIDATOR_NAME: &str = "envoy.tls.cert_validator.spiffe";

/// Facts of the issuer API that the operator and the agent must agree on,
/// kept here once so the two sides cannot drift apart.
pub mod issuer_protocol {
    /// SPIFFE ID path of the issuer's own SVID, which agents authenticate it by.
    pub const ISSUER_PATH: &str = "/signet/issuer";
    // The rule that no workload may hold an ID under `/signet` lives with
    // the IDs themselves: `signet_identity::is_reserved_path`.

    /// Agent SVIDs live under this path.
    pub const AGENT_PATH_PREFIX: &str = "/signet/agent/";
    /// Agents that joined with a join token: `<prefix><name>`.
    pub const JOIN_AGENT_PATH_PREFIX: &str = "/signet/agent/join/";
    /// Agents of a Kubernetes node: `<prefix><node>`.
    pub const NODE_AGENT_PATH_PREFIX: &str = "/signet/agent/k8s/";
    /// Requests per SignX509Svids / SignJwtSvids call, as SPIRE batches.
    pub const MAX_BATCH: usize = 500;
    /// Audiences per JWT-SVID.
    pub const MAX_AUDIENCES: usize = 16;
    /// Bytes per JWT-SVID audience.
    pub const MAX_AUDIENCE_LEN: usize = 1024;
    /// Bytes of a join token or projected service-account token (the API
    /// server's are about 1 KiB).
    pub const MAX_JOIN_TOKEN_LEN: usize = 16 * 1024;
    /// Bytes of a CSR (an RSA-4096 request is under 2 KiB).
    pub const MAX_CSR_LEN: usize = 16 * 1024;
}

macro_rules! generated {
    ($file:literal) => {
        include!(concat!(env!("OUT_DIR"), "/", $file));
    };
}

/// SPIFFE Workload API (the spec's package-less `workload.proto`; method
/// paths are `/SpiffeWorkloadAPI/<Method>`).
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
pub mod workload {
    generated!("_.rs");
}

/// Container Storage Interface.
pub mod csi {
    /// CSI v1 Identity and Node services (package `csi.v1`).
    #[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
    pub mod v1 {
        generated!("csi.v1.rs");
    }
}

/// Kubelet plugin registration (package `pluginregistration`).
#[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
pub mod pluginregistration {
    generated!("pluginregistration.rs");
}

/// Signet's own APIs.
pub mod issuer {
    /// Issuer (operator) and Delegated (agent admin socket) services
    /// (package `signet.issuer.v1`).
    #[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
    pub mod v1 {
        generated!("signet.issuer.v1.rs");
    }
}

/// The subset of Envoy's xDS API used by the Secret Discovery Service.
pub mod envoy {
    /// `envoy.config.*`
    pub mod config {
        /// `envoy.config.core.*`
        pub mod core {
            /// Node, DataSource, TypedExtensionConfig, ...
            #[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
            pub mod v3 {
                generated!("envoy.config.core.v3.rs");
            }
        }
    }

    /// `envoy.type.*`
    pub mod r#type {
        /// SemanticVersion.
        #[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
        pub mod v3 {
            generated!("envoy.r#type.v3.rs");
        }
    }

    /// `envoy.service.*`
    pub mod service {
        /// `envoy.service.discovery.*`
        pub mod discovery {
            /// DiscoveryRequest and DiscoveryResponse.
            #[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
            pub mod v3 {
                generated!("envoy.service.discovery.v3.rs");
            }
        }

        /// `envoy.service.secret.*`
        pub mod secret {
            /// The SecretDiscoveryService.
            #[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
            pub mod v3 {
                generated!("envoy.service.secret.v3.rs");
            }
        }
    }

    /// `envoy.extensions.*`
    pub mod extensions {
        /// `envoy.extensions.transport_sockets.*`
        pub mod transport_sockets {
            /// `envoy.extensions.transport_sockets.tls.*`
            pub mod tls {
                /// Secret, TlsCertificate, CertificateValidationContext,
                /// SPIFFECertValidatorConfig.
                #[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
                pub mod v3 {
                    generated!("envoy.extensions.transport_sockets.tls.v3.rs");
                }
            }
        }
    }
}

/// `google.*` types that are not in prost-types.
pub mod google {
    /// `google.rpc.Status`.
    #[allow(clippy::all, clippy::pedantic, clippy::nursery, missing_docs)]
    pub mod rpc {
        generated!("google.rpc.rs");
    }
}
