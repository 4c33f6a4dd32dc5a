//! Interop with a third-party Workload API client: the Rust `spiffe` crate
//! (rust-spiffe), which validates SVIDs and keys on its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod wl_support;

use signet_agent::testing::TestAgent;
use spiffe::WorkloadApiClient;
use wl_support::*;

#[tokio::test]
async fn rust_spiffe_client_fetches_and_validates() {
    let agent = TestAgent::builder()
        .policy_yaml(policy("web", "db", &[]))
        .start();
    let client = WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let web = format!("spiffe://example.org/uid/{}/web", uid());

    let context = client.fetch_x509_context().await.unwrap();
    let default = context.default_svid().unwrap();
    assert_eq!(default.spiffe_id().to_string(), web);
    assert_eq!(default.hint(), Some("web"));
    assert_eq!(context.svids().len(), 2);
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    assert!(context.bundle_set().get(&td).is_some());

    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), web);

    let token = client.fetch_jwt_token(["ledger"], None).await.unwrap();
    let validated = client.validate_jwt_token("ledger", &token).await.unwrap();
    assert_eq!(validated.spiffe_id().to_string(), web);
    assert!(client.validate_jwt_token("other", &token).await.is_err());

    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    assert!(jwt_bundles.get(&td).is_some());
}
