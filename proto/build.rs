//! Compiles `protos/` with protox (a protobuf compiler written in Rust, so no
//! `protoc` is needed) and generates prost messages plus tonic clients and
//! servers for every service into `OUT_DIR`.

use std::error::Error;
use std::path::PathBuf;

/// Files passed to the compiler; their imports are resolved under `protos/`.
const PROTOS: &[&str] = &[
    "workload.proto",
    "csi.proto",
    "pluginregistration.proto",
    "issuer.proto",
    "envoy/service/secret/v3/sds.proto",
    "envoy/extensions/transport_sockets/tls/v3/secret.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls_spiffe_validator_config.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("protos");
    #[allow(clippy::print_stdout)] // cargo reads build script directives from stdout
    {
        println!("cargo:rerun-if-changed={}", root.display());
        println!("cargo:rerun-if-changed=build.rs");
    }

    let fds = protox::compile(PROTOS, [&root])?;

    // Name impls give every message `type_url()` in the
    // "type.googleapis.com/<full name>" form that google.protobuf.Any uses.
    let mut config = tonic_prost_build::Config::new();
    config
        .enable_type_names()
        .type_name_domain(["."], "type.googleapis.com")
        // One policy document goes to every agent: shared, not copied.
        .bytes([
            ".signet.issuer.v1.PolicyUpdate.policy",
            ".signet.issuer.v1.PolicyDelta",
        ]);

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds_with_config(fds, config)?;
    Ok(())
}
