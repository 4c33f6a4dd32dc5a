//! signet-operator: policy reconciler, certificate authority and issuer API.

fn main() {}
