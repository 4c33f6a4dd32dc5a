//! Hot paths of issuance: key generation on the agent, SVID minting on the
//! operator, JWT validation on both.

// A benchmark whose setup fails has nothing to measure; aborting is right.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::Map;
use signet_identity::x509::create_csr;
use signet_identity::{
    CaConfig, CaKeyset, KeyType, PrivateKey, SpiffeId, TrustDomain, X509SvidParams,
    validate_jwt_svid,
};

fn setup() -> (CaKeyset, SystemTime) {
    // Any fixed instant: nothing here compares with the real clock.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    let config = CaConfig::new(TrustDomain::new("example.org").expect("trust domain"));
    (CaKeyset::new(config, now).expect("keyset"), now)
}

fn benches(c: &mut Criterion) {
    let (ks, now) = setup();
    let id = SpiffeId::parse("spiffe://example.org/ns/default/sa/web").expect("id");
    let mut params = X509SvidParams::new(id.clone(), Duration::from_secs(3600));
    params.dns_sans = vec!["web.default.svc".to_owned()];
    let workload_key = PrivateKey::generate(KeyType::EcP256).expect("key");
    let csr = create_csr(&workload_key).expect("csr");

    c.bench_function("generate_key_ec_p256", |b| {
        b.iter(|| PrivateKey::generate(black_box(KeyType::EcP256)).expect("key"))
    });
    c.bench_function("mint_x509_svid_from_public_key_p256_ca", |b| {
        b.iter(|| {
            ks.mint_x509_svid(black_box(&params), workload_key.public_key(), now)
                .expect("svid")
        })
    });
    c.bench_function("mint_x509_svid_from_csr_p256_ca", |b| {
        b.iter(|| {
            ks.mint_x509_svid_from_csr(black_box(&params), &csr, now)
                .expect("svid")
        })
    });

    let audiences = vec!["reports".to_owned()];
    let extra = Map::new();
    c.bench_function("mint_jwt_svid_es256", |b| {
        b.iter(|| {
            ks.mint_jwt_svid(
                black_box(&id),
                &audiences,
                Duration::from_secs(300),
                &extra,
                now,
            )
            .expect("jwt")
        })
    });
    let token = ks
        .mint_jwt_svid(&id, &audiences, Duration::from_secs(300), &extra, now)
        .expect("jwt")
        .token;
    let bundle = ks.bundle(now);
    c.bench_function("validate_jwt_svid_es256", |b| {
        b.iter(|| validate_jwt_svid(black_box(&token), "reports", &bundle, now).expect("valid"))
    });
}

criterion_group!(svid, benches);
criterion_main!(svid);
