//! signet-agent binary.

fn main() {}
