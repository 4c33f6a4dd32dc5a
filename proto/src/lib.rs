//! Protocol buffers and generated gRPC code: SPIFFE Workload API, Envoy SDS, CSI, kubelet plugin registration and the Signet issuer API.
