//! Workload key generation: every SVID gets its own fresh key, generated on
//! the node; only the CSR leaves it. The public key travels with the CSR
//! inside the agent so the answer is checked without parsing the CSR again.

use signet_identity::{KeyType, PrivateKey, x509};

use super::seams::{KeyFactory, KeyMaterial};

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("generating a {key_type} key: {source}")]
    Generate {
        key_type: KeyType,
        #[source]
        source: signet_identity::KeyError,
    },
    #[error("building a CSR: {0}")]
    Csr(#[from] signet_identity::X509Error),
}

/// Generates keys of one type (`svid_key_type` in the configuration).
#[derive(Clone, Copy, Debug)]
pub struct SvidKeyFactory {
    key_type: KeyType,
}

impl SvidKeyFactory {
    pub fn new(key_type: KeyType) -> Self {
        Self { key_type }
    }

    /// A key and its CSR.
    pub fn generate_key(&self) -> Result<(PrivateKey, Vec<u8>), KeysError> {
        let key = PrivateKey::generate(self.key_type).map_err(|source| KeysError::Generate {
            key_type: self.key_type,
            source,
        })?;
        let csr = x509::create_csr(&key)?;
        Ok((key, csr))
    }
}

impl KeyFactory for SvidKeyFactory {
    fn generate(&self) -> Result<KeyMaterial, String> {
        let (key, csr_der) = self.generate_key().map_err(|e| e.to_string())?;
        Ok(KeyMaterial {
            private_key: key.to_pkcs8_der(),
            public_key: key.public_key().clone(),
            csr_der,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_carries_the_generated_key() {
        let factory = SvidKeyFactory::new(KeyType::EcP256);
        let material = factory.generate().unwrap();
        let key = PrivateKey::from_pkcs8_der(&material.private_key).unwrap();
        let csr_key = x509::public_key_from_csr(&material.csr_der).unwrap();
        assert_eq!(csr_key.spki_der(), key.public_key().spki_der());
        assert_eq!(material.public_key, *key.public_key());
        // Every call is a new key.
        let other = factory.generate().unwrap();
        assert_ne!(other.csr_der, material.csr_der);
    }
}
