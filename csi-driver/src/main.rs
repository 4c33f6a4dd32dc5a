//! signet-csi: the CSI driver that mounts the Workload API or SVID files into pods.

fn main() {}
