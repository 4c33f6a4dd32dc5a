//! SPIFFE identities: IDs, X.509-SVID and JWT-SVID minting and verification, trust bundles and the CA keyset. No I/O.
