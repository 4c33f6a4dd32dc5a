//! An organisation's PKI for the upstream CA tests: a root and an issuing
//! CA under it, neither with a SPIFFE ID (corporate CAs have none).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// The PKI as PEM: what `ca.upstream` (or a cert-manager CA Secret) holds.
pub struct CorporatePki {
    /// The root certificate.
    pub root_pem: String,
    pub root_der: Vec<u8>,
    /// The issuing CA's certificate, then the root (`tls.crt`).
    pub chain_pem: String,
    /// The issuing CA's PKCS#8 key (`tls.key`).
    pub key_pem: String,
}

/// Paths of the three files [`CorporatePki::write`] made.
pub struct PkiFiles {
    pub chain: PathBuf,
    pub key: PathBuf,
    pub roots: PathBuf,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new())
        .unwrap_or_else(|e| panic!("CA parameters: {e}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Corp");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

impl CorporatePki {
    pub fn generate() -> Self {
        let fail = |e: rcgen::Error| -> ! { panic!("generating the test PKI: {e}") };
        let root_key = KeyPair::generate().unwrap_or_else(|e| fail(e));
        let root_params = ca_params("Corp Root CA");
        let root = root_params
            .self_signed(&root_key)
            .unwrap_or_else(|e| fail(e));
        let issuing_key = KeyPair::generate().unwrap_or_else(|e| fail(e));
        let issuing = ca_params("Corp Signet Issuing CA")
            .signed_by(&issuing_key, &Issuer::new(root_params, root_key))
            .unwrap_or_else(|e| fail(e));
        Self {
            root_der: root.der().to_vec(),
            chain_pem: format!("{}{}", issuing.pem(), root.pem()),
            root_pem: root.pem(),
            key_pem: issuing_key.serialize_pem(),
        }
    }

    /// Writes `upstream.crt`, `upstream.key` and `roots.pem` into `dir`.
    pub fn write(&self, dir: &Path) -> PkiFiles {
        let files = PkiFiles {
            chain: dir.join("upstream.crt"),
            key: dir.join("upstream.key"),
            roots: dir.join("roots.pem"),
        };
        for (path, contents) in [
            (&files.chain, &self.chain_pem),
            (&files.key, &self.key_pem),
            (&files.roots, &self.root_pem),
        ] {
            std::fs::write(path, contents)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        }
        files
    }
}
