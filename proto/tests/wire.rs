//! Wire-format golden tests. Every expected byte string is written out from
//! the field numbers and wire types in the upstream specifications (SPIFFE
//! workloadapi.proto, CSI csi.proto, kubelet pluginregistration api.proto,
//! Envoy's xDS protos), so a wrong field number or type in `protos/` fails
//! here. Each case is checked both ways: our encoding equals the golden
//! bytes, and decoding the golden bytes gives the expected message.
//!
//! Key bytes: `(field_number << 3) | wire_type`, wire type 0 = varint,
//! 2 = length-delimited. E.g. field 1 bytes = 0x0a, field 2 = 0x12,
//! field 3 = 0x1a, field 4 = 0x22, field 5 = 0x2a, field 6 varint = 0x30.

// Test helpers outside #[test] functions panic on bad input too.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::fmt::Debug;

use prost::{Message, Name};
use signet_proto::prost_types;

/// Asserts `msg` encodes to exactly `golden` and `golden` decodes to `msg`.
fn golden<M: Message + Default + PartialEq + Debug>(msg: &M, golden: &[u8]) {
    assert_eq!(
        msg.encode_to_vec(),
        golden,
        "encoding of {msg:?} differs from the golden bytes"
    );
    let decoded = M::decode(golden).unwrap();
    assert_eq!(&decoded, msg, "decoding the golden bytes");
}

/// Length-delimited field: key byte (field < 16), varint length, payload.
fn ld(key: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![key];
    let mut len = payload.len();
    while len >= 0x80 {
        out.push((len & 0x7f) as u8 | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(payload);
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn s(v: &str) -> String {
    v.to_owned()
}

mod workload_api {
    use super::*;
    use signet_proto::workload::*;

    #[test]
    fn x509_svid_every_field() {
        let msg = X509svid {
            spiffe_id: s("spiffe://td/w"),
            x509_svid: vec![0x30, 0x01],
            x509_svid_key: vec![0x04],
            bundle: vec![0xca, 0xfe],
            hint: s("int"),
        };
        #[rustfmt::skip]
        let bytes = [
            0x0a, 13, b's', b'p', b'i', b'f', b'f', b'e', b':', b'/', b'/', b't', b'd', b'/', b'w',
            0x12, 2, 0x30, 0x01,   // x509_svid = 2
            0x1a, 1, 0x04,         // x509_svid_key = 3
            0x22, 2, 0xca, 0xfe,   // bundle = 4
            0x2a, 3, b'i', b'n', b't', // hint = 5
        ];
        golden(&msg, &bytes);
    }

    #[test]
    fn x509_svid_response_svids_crl_and_federated_bundles() {
        let msg = X509svidResponse {
            svids: vec![X509svid {
                spiffe_id: s("a"),
                ..Default::default()
            }],
            crl: vec![vec![0x01]],
            federated_bundles: HashMap::from([(s("spiffe://b"), vec![0x02])]),
        };
        // federated_bundles = 3: map entry {key = 1, value = 2}.
        let entry = cat(&[&ld(0x0a, b"spiffe://b"), &ld(0x12, &[0x02])]);
        let bytes = cat(&[
            &ld(0x0a, &ld(0x0a, b"a")), // svids = 1 { spiffe_id = 1 }
            &ld(0x12, &[0x01]),         // crl = 2
            &ld(0x1a, &entry),
        ]);
        assert_eq!(bytes[..5], [0x0a, 3, 0x0a, 1, b'a']);
        golden(&msg, &bytes);
    }

    #[test]
    fn x509_bundles_response() {
        let msg = X509BundlesResponse {
            crl: vec![vec![0x09]],
            bundles: HashMap::from([(s("spiffe://a"), vec![0x07])]),
        };
        let entry = cat(&[&ld(0x0a, b"spiffe://a"), &ld(0x12, &[0x07])]);
        // crl = 1, bundles = 2
        golden(&msg, &cat(&[&ld(0x0a, &[0x09]), &ld(0x12, &entry)]));
    }

    #[test]
    fn jwt_svid_request() {
        let msg = JwtsvidRequest {
            audience: vec![s("a"), s("b")],
            spiffe_id: s("s"),
        };
        // audience = 1 (repeated string), spiffe_id = 2
        golden(&msg, &[0x0a, 1, b'a', 0x0a, 1, b'b', 0x12, 1, b's']);
    }

    #[test]
    fn jwt_svid_response() {
        let msg = JwtsvidResponse {
            svids: vec![Jwtsvid {
                spiffe_id: s("i"),
                svid: s("t"),
                hint: s("h"),
            }],
        };
        // svids = 1 { spiffe_id = 1, svid = 2, hint = 3 }
        let inner = [0x0a, 1, b'i', 0x12, 1, b't', 0x1a, 1, b'h'];
        golden(&msg, &ld(0x0a, &inner));
    }

    #[test]
    fn jwt_bundles_response() {
        let msg = JwtBundlesResponse {
            bundles: HashMap::from([(s("spiffe://a"), b"{}".to_vec())]),
        };
        let entry = cat(&[&ld(0x0a, b"spiffe://a"), &ld(0x12, b"{}")]);
        golden(&msg, &ld(0x0a, &entry)); // bundles = 1
    }

    #[test]
    fn validate_jwt_svid_request_and_response() {
        let req = ValidateJwtsvidRequest {
            audience: s("aud"),
            svid: s("jwt"),
        };
        golden(
            &req,
            &cat(&[&ld(0x0a, b"aud"), &ld(0x12, b"jwt")]), // audience = 1, svid = 2
        );

        let resp = ValidateJwtsvidResponse {
            spiffe_id: s("i"),
            claims: Some(prost_types::Struct {
                fields: std::collections::BTreeMap::from([(
                    s("sub"),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(s("x"))),
                    },
                )]),
            }),
        };
        // claims = 2 is a google.protobuf.Struct {fields = 1: map<string, Value>},
        // Value.string_value = 3.
        let value = ld(0x1a, b"x");
        let entry = cat(&[&ld(0x0a, b"sub"), &ld(0x12, &value)]);
        let claims = ld(0x0a, &entry);
        golden(&resp, &cat(&[&ld(0x0a, b"i"), &ld(0x12, &claims)]));
    }

    #[test]
    fn empty_requests_encode_empty() {
        assert!(X509svidRequest {}.encode_to_vec().is_empty());
        assert!(X509BundlesRequest {}.encode_to_vec().is_empty());
        assert!(JwtBundlesRequest {}.encode_to_vec().is_empty());
    }

    #[test]
    fn messages_have_no_package() {
        assert_eq!(X509svid::full_name(), "X509SVID");
        assert_eq!(JwtsvidRequest::full_name(), "JWTSVIDRequest");
        assert_eq!(
            ValidateJwtsvidResponse::full_name(),
            "ValidateJWTSVIDResponse"
        );
    }
}

mod csi {
    use super::*;
    use signet_proto::csi::v1::*;

    #[test]
    fn node_publish_volume_request() {
        let msg = NodePublishVolumeRequest {
            volume_id: s("v"),
            publish_context: HashMap::from([(s("p"), s("q"))]),
            staging_target_path: s("/s"),
            target_path: s("/t"),
            volume_capability: Some(VolumeCapability {
                access_type: Some(volume_capability::AccessType::Mount(
                    volume_capability::MountVolume {
                        fs_type: s("ext4"),
                        mount_flags: vec![s("ro")],
                        volume_mount_group: s("g"),
                    },
                )),
                access_mode: Some(volume_capability::AccessMode {
                    mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
                }),
            }),
            readonly: true,
            secrets: HashMap::from([(s("k"), s("x"))]),
            volume_context: HashMap::from([(s("csi.storage.k8s.io/pod.uid"), s("u"))]),
        };
        // MountVolume {fs_type = 1, mount_flags = 2, volume_mount_group = 3}
        let mount = cat(&[&ld(0x0a, b"ext4"), &ld(0x12, b"ro"), &ld(0x1a, b"g")]);
        // VolumeCapability {mount = 2, access_mode = 3 {mode = 1 (varint)}}
        let capability = cat(&[&ld(0x12, &mount), &[0x1a, 2, 0x08, 1]]);
        let map_entry = |k: &[u8], v: &[u8]| cat(&[&ld(0x0a, k), &ld(0x12, v)]);
        let bytes = cat(&[
            &ld(0x0a, b"v"),                                            // volume_id = 1
            &ld(0x12, &map_entry(b"p", b"q")),                          // publish_context = 2
            &ld(0x1a, b"/s"),                                           // staging_target_path = 3
            &ld(0x22, b"/t"),                                           // target_path = 4
            &ld(0x2a, &capability),                                     // volume_capability = 5
            &[0x30, 1],                                                 // readonly = 6 (varint)
            &ld(0x3a, &map_entry(b"k", b"x")),                          // secrets = 7
            &ld(0x42, &map_entry(b"csi.storage.k8s.io/pod.uid", b"u")), // volume_context = 8
        ]);
        golden(&msg, &bytes);
    }

    #[test]
    fn node_unpublish_and_stage_requests() {
        let msg = NodeUnpublishVolumeRequest {
            volume_id: s("v"),
            target_path: s("/t"),
        };
        golden(&msg, &cat(&[&ld(0x0a, b"v"), &ld(0x12, b"/t")]));

        let msg = NodeStageVolumeRequest {
            volume_id: s("v"),
            staging_target_path: s("/s"),
            volume_context: HashMap::from([(s("a"), s("b"))]),
            ..Default::default()
        };
        let entry = cat(&[&ld(0x0a, b"a"), &ld(0x12, b"b")]);
        // volume_id = 1, staging_target_path = 3, volume_context = 6
        golden(
            &msg,
            &cat(&[&ld(0x0a, b"v"), &ld(0x1a, b"/s"), &ld(0x32, &entry)]),
        );
    }

    #[test]
    fn block_access_type_and_modes() {
        let msg = VolumeCapability {
            access_type: Some(volume_capability::AccessType::Block(
                volume_capability::BlockVolume {},
            )),
            access_mode: Some(volume_capability::AccessMode {
                mode: volume_capability::access_mode::Mode::SingleNodeMultiWriter as i32,
            }),
        };
        // block = 1 (empty message), access_mode = 3 {mode = 1: 7}
        golden(&msg, &[0x0a, 0, 0x1a, 2, 0x08, 7]);
        use volume_capability::access_mode::Mode;
        assert_eq!(Mode::MultiNodeReaderOnly as i32, 3);
        assert_eq!(Mode::MultiNodeMultiWriter as i32, 5);
        assert_eq!(Mode::SingleNodeSingleWriter as i32, 6);
    }

    #[test]
    fn plugin_info_capabilities_and_probe() {
        let msg = GetPluginInfoResponse {
            name: s("csi.signet.dev"),
            vendor_version: s("0.1.0"),
            manifest: HashMap::from([(s("k"), s("v"))]),
        };
        let entry = cat(&[&ld(0x0a, b"k"), &ld(0x12, b"v")]);
        golden(
            &msg,
            &cat(&[
                &ld(0x0a, b"csi.signet.dev"),
                &ld(0x12, b"0.1.0"),
                &ld(0x1a, &entry),
            ]),
        );

        let msg = GetPluginCapabilitiesResponse {
            capabilities: vec![
                PluginCapability {
                    r#type: Some(plugin_capability::Type::Service(
                        plugin_capability::Service {
                            r#type: plugin_capability::service::Type::ControllerService as i32,
                        },
                    )),
                },
                PluginCapability {
                    r#type: Some(plugin_capability::Type::VolumeExpansion(
                        plugin_capability::VolumeExpansion {
                            r#type: plugin_capability::volume_expansion::Type::Online as i32,
                        },
                    )),
                },
            ],
        };
        // capabilities = 1; PluginCapability {service = 1 | volume_expansion = 2},
        // each {type = 1 (varint)}.
        #[rustfmt::skip]
        let bytes = [
            0x0a, 4, 0x0a, 2, 0x08, 1,
            0x0a, 4, 0x12, 2, 0x08, 1,
        ];
        golden(&msg, &bytes);

        // ready = 1 is a google.protobuf.BoolValue {value = 1}.
        golden(&ProbeResponse { ready: Some(true) }, &[0x0a, 2, 0x08, 1]);
        // An explicit false still sends the wrapper (presence matters).
        golden(&ProbeResponse { ready: Some(false) }, &[0x0a, 0]);
    }

    #[test]
    fn node_capabilities_and_info() {
        let msg = NodeGetCapabilitiesResponse {
            capabilities: vec![NodeServiceCapability {
                r#type: Some(node_service_capability::Type::Rpc(
                    node_service_capability::Rpc {
                        r#type: node_service_capability::rpc::Type::VolumeMountGroup as i32,
                    },
                )),
            }],
        };
        // capabilities = 1 {rpc = 1 {type = 1: 6}}
        golden(&msg, &[0x0a, 4, 0x0a, 2, 0x08, 6]);
        use node_service_capability::rpc::Type;
        assert_eq!(Type::StageUnstageVolume as i32, 1);
        assert_eq!(Type::GetVolumeStats as i32, 2);
        assert_eq!(Type::ExpandVolume as i32, 3);
        assert_eq!(Type::VolumeCondition as i32, 4);
        assert_eq!(Type::SingleNodeMultiWriter as i32, 5);

        let msg = NodeGetInfoResponse {
            node_id: s("n"),
            max_volumes_per_node: 300,
            accessible_topology: Some(Topology {
                segments: HashMap::from([(s("z"), s("1"))]),
            }),
        };
        let entry = cat(&[&ld(0x0a, b"z"), &ld(0x12, b"1")]);
        // node_id = 1, max_volumes_per_node = 2 (varint 300 = ac 02),
        // accessible_topology = 3 {segments = 1}
        golden(
            &msg,
            &cat(&[
                &ld(0x0a, b"n"),
                &[0x10, 0xac, 0x02],
                &ld(0x1a, &ld(0x0a, &entry)),
            ]),
        );
    }

    #[test]
    fn volume_stats() {
        let msg = NodeGetVolumeStatsResponse {
            usage: vec![VolumeUsage {
                available: 1,
                total: 2,
                used: 3,
                unit: volume_usage::Unit::Bytes as i32,
            }],
            volume_condition: Some(VolumeCondition {
                abnormal: true,
                message: s("m"),
            }),
        };
        // usage = 1 {available = 1, total = 2, used = 3, unit = 4}
        // volume_condition = 2 {abnormal = 1, message = 2}
        #[rustfmt::skip]
        let bytes = [
            0x0a, 8, 0x08, 1, 0x10, 2, 0x18, 3, 0x20, 1,
            0x12, 5, 0x08, 1, 0x12, 1, b'm',
        ];
        golden(&msg, &bytes);

        let req = NodeGetVolumeStatsRequest {
            volume_id: s("v"),
            volume_path: s("/p"),
            staging_target_path: s("/s"),
        };
        golden(
            &req,
            &cat(&[&ld(0x0a, b"v"), &ld(0x12, b"/p"), &ld(0x1a, b"/s")]),
        );
    }

    #[test]
    fn node_expand_volume() {
        let msg = NodeExpandVolumeRequest {
            volume_id: s("v"),
            volume_path: s("/p"),
            capacity_range: Some(CapacityRange {
                required_bytes: 1,
                limit_bytes: 2,
            }),
            staging_target_path: s("/s"),
            volume_capability: None,
            secrets: HashMap::new(),
        };
        // capacity_range = 3 {required_bytes = 1, limit_bytes = 2}, staging_target_path = 4
        golden(
            &msg,
            &cat(&[
                &ld(0x0a, b"v"),
                &ld(0x12, b"/p"),
                &ld(0x1a, &[0x08, 1, 0x10, 2]),
                &ld(0x22, b"/s"),
            ]),
        );
        golden(&NodeExpandVolumeResponse { capacity_bytes: 5 }, &[0x08, 5]);
    }
}

mod pluginregistration {
    use super::*;
    use signet_proto::pluginregistration::*;

    #[test]
    fn plugin_info() {
        let msg = PluginInfo {
            r#type: s("CSIPlugin"),
            name: s("csi.signet.dev"),
            endpoint: s("/var/lib/kubelet/plugins/csi.signet.dev/csi.sock"),
            supported_versions: vec![s("1.0.0")],
        };
        let bytes = cat(&[
            &ld(0x0a, b"CSIPlugin"),
            &ld(0x12, b"csi.signet.dev"),
            &ld(0x1a, b"/var/lib/kubelet/plugins/csi.signet.dev/csi.sock"),
            &ld(0x22, b"1.0.0"),
        ]);
        golden(&msg, &bytes);
    }

    #[test]
    fn registration_status() {
        let msg = RegistrationStatus {
            plugin_registered: true,
            error: s("e"),
        };
        golden(&msg, &[0x08, 1, 0x12, 1, b'e']);
    }
}

mod sds {
    use super::*;
    use signet_proto::envoy::config::core::v3::{
        BuildVersion, ControlPlane, DataSource, Locality, Node, TypedExtensionConfig,
        WatchedDirectory, data_source::Specifier, node::UserAgentVersionType,
    };
    use signet_proto::envoy::extensions::transport_sockets::tls::v3::{
        CertificateValidationContext, GenericSecret, Secret, SpiffeCertValidatorConfig,
        TlsCertificate, secret, spiffe_cert_validator_config::TrustDomain,
    };
    use signet_proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
    use signet_proto::envoy::r#type::v3::SemanticVersion;
    use signet_proto::google::rpc::Status;

    fn inline(b: &[u8]) -> DataSource {
        DataSource {
            specifier: Some(Specifier::InlineBytes(b.to_vec())),
            watched_directory: None,
        }
    }

    #[test]
    fn discovery_request() {
        let msg = DiscoveryRequest {
            version_info: s("1"),
            node: Some(Node {
                id: s("n"),
                cluster: s("c"),
                ..Default::default()
            }),
            resource_names: vec![s("default"), s("ROOTCA")],
            type_url: s(signet_proto::SDS_SECRET_TYPE_URL),
            response_nonce: s("x"),
            error_detail: Some(Status {
                code: 3,
                message: s("bad"),
                details: vec![],
            }),
        };
        let bytes = cat(&[
            &ld(0x0a, b"1"),                                      // version_info = 1
            &ld(0x12, &cat(&[&ld(0x0a, b"n"), &ld(0x12, b"c")])), // node = 2 {id = 1, cluster = 2}
            &ld(0x1a, b"default"),                                // resource_names = 3
            &ld(0x1a, b"ROOTCA"),
            &ld(0x22, signet_proto::SDS_SECRET_TYPE_URL.as_bytes()), // type_url = 4
            &ld(0x2a, b"x"),                                         // response_nonce = 5
            &ld(0x32, &cat(&[&[0x08, 3][..], &ld(0x12, b"bad")])), // error_detail = 6 {code = 1, message = 2}
        ]);
        golden(&msg, &bytes);
    }

    #[test]
    fn node_fields() {
        let msg = Node {
            id: s("i"),
            cluster: s("c"),
            metadata: Some(prost_types::Struct::default()),
            locality: Some(Locality {
                region: s("r"),
                zone: s("z"),
                sub_zone: s("s"),
            }),
            user_agent_name: s("envoy"),
            user_agent_version_type: Some(UserAgentVersionType::UserAgentBuildVersion(
                BuildVersion {
                    version: Some(SemanticVersion {
                        major_number: 1,
                        minor_number: 2,
                        patch: 3,
                    }),
                    metadata: None,
                },
            )),
            client_features: vec![s("f")],
        };
        let bytes = cat(&[
            &ld(0x0a, b"i"), // id = 1
            &ld(0x12, b"c"), // cluster = 2
            &[0x1a, 0],      // metadata = 3
            &ld(
                0x22,
                &cat(&[&ld(0x0a, b"r"), &ld(0x12, b"z"), &ld(0x1a, b"s")]),
            ), // locality = 4
            &ld(0x32, b"envoy"), // user_agent_name = 6
            &ld(0x42, &ld(0x0a, &[0x08, 1, 0x10, 2, 0x18, 3])), // user_agent_build_version = 8
            &ld(0x52, b"f"), // client_features = 10
        ]);
        golden(&msg, &bytes);

        let msg = Node {
            user_agent_version_type: Some(UserAgentVersionType::UserAgentVersion(s("1.30"))),
            ..Default::default()
        };
        golden(&msg, &ld(0x3a, b"1.30")); // user_agent_version = 7
    }

    #[test]
    fn node_fields_we_do_not_model_are_skipped() {
        // extensions = 9 {name = 1}, listening_addresses = 11 and
        // dynamic_parameters = 12 as Envoy sends them, around id = 1.
        let bytes = cat(&[
            &ld(0x4a, &ld(0x0a, b"envoy.filters.http.router")),
            &ld(0x0a, b"i"),
            &ld(0x5a, &[]),
            &ld(0x62, &ld(0x0a, b"k")),
        ]);
        let node = Node::decode(&bytes[..]).unwrap();
        assert_eq!(node.id, "i");
    }

    #[test]
    fn discovery_response() {
        let resource = prost_types::Any {
            type_url: s("t"),
            value: vec![0x01],
        };
        let msg = DiscoveryResponse {
            version_info: s("v"),
            resources: vec![resource],
            canary: true,
            type_url: s("t"),
            nonce: s("n"),
            control_plane: Some(ControlPlane {
                identifier: s("cp"),
            }),
        };
        let bytes = cat(&[
            &ld(0x0a, b"v"),                                         // version_info = 1
            &ld(0x12, &cat(&[&ld(0x0a, b"t"), &ld(0x12, &[0x01])])), // resources = 2 (Any)
            &[0x18, 1],                                              // canary = 3
            &ld(0x22, b"t"),                                         // type_url = 4
            &ld(0x2a, b"n"),                                         // nonce = 5
            &ld(0x32, &ld(0x0a, b"cp")),                             // control_plane = 6
        ]);
        golden(&msg, &bytes);
    }

    #[test]
    fn secret_with_tls_certificate() {
        let msg = Secret {
            name: s("default"),
            r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
                certificate_chain: Some(inline(b"C")),
                private_key: Some(inline(b"K")),
                ..Default::default()
            })),
        };
        // DataSource.inline_bytes = 2
        let cert = cat(&[&ld(0x0a, &ld(0x12, b"C")), &ld(0x12, &ld(0x12, b"K"))]);
        // name = 1, tls_certificate = 2
        golden(&msg, &cat(&[&ld(0x0a, b"default"), &ld(0x12, &cert)]));
    }

    #[test]
    fn tls_certificate_other_fields() {
        let msg = TlsCertificate {
            password: Some(inline(b"p")),
            ocsp_staple: Some(inline(b"o")),
            watched_directory: Some(WatchedDirectory { path: s("/d") }),
            pkcs12: Some(inline(b"x")),
            ..Default::default()
        };
        // password = 3, ocsp_staple = 4, watched_directory = 7, pkcs12 = 8
        let bytes = cat(&[
            &ld(0x1a, &ld(0x12, b"p")),
            &ld(0x22, &ld(0x12, b"o")),
            &ld(0x3a, &ld(0x0a, b"/d")),
            &ld(0x42, &ld(0x12, b"x")),
        ]);
        golden(&msg, &bytes);
    }

    #[test]
    fn secret_with_spiffe_validation_context() {
        let config = SpiffeCertValidatorConfig {
            trust_domains: vec![TrustDomain {
                name: s("a"),
                trust_bundle: Some(inline(b"P")),
            }],
        };
        // trust_domains = 1 {name = 1, trust_bundle = 2}
        let config_bytes = ld(0x0a, &cat(&[&ld(0x0a, b"a"), &ld(0x12, &ld(0x12, b"P"))]));
        golden(&config, &config_bytes);

        let any = prost_types::Any::from_msg(&config).unwrap();
        assert_eq!(
            any.type_url,
            signet_proto::SPIFFE_CERT_VALIDATOR_CONFIG_TYPE_URL
        );

        let msg = Secret {
            name: s("ALL"),
            r#type: Some(secret::Type::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: Some(inline(b"R")),
                    custom_validator_config: Some(TypedExtensionConfig {
                        name: s(signet_proto::SPIFFE_CERT_VALIDATOR_NAME),
                        typed_config: Some(any),
                    }),
                    max_verify_depth: Some(3),
                    ..Default::default()
                },
            )),
        };
        let any_bytes = cat(&[
            &ld(
                0x0a,
                signet_proto::SPIFFE_CERT_VALIDATOR_CONFIG_TYPE_URL.as_bytes(),
            ),
            &ld(0x12, &config_bytes),
        ]);
        let extension = cat(&[
            &ld(0x0a, signet_proto::SPIFFE_CERT_VALIDATOR_NAME.as_bytes()),
            &ld(0x12, &any_bytes),
        ]);
        let context = cat(&[
            &ld(0x0a, &ld(0x12, b"R")), // trusted_ca = 1
            &ld(0x62, &extension),      // custom_validator_config = 12: key 12<<3|2 = 0x62
            // max_verify_depth = 16 (UInt32Value {value = 1}): key 16<<3|2 = 130 = varint 82 01
            &[0x82, 0x01, 2, 0x08, 3],
        ]);
        // name = 1, validation_context = 4
        golden(&msg, &cat(&[&ld(0x0a, b"ALL"), &ld(0x22, &context)]));
    }

    #[test]
    fn validation_context_scalars() {
        let msg = CertificateValidationContext {
            verify_certificate_hash: vec![s("h")],
            verify_certificate_spki: vec![s("k")],
            crl: Some(inline(b"c")),
            allow_expired_certificate: true,
            trust_chain_verification: 1,
            watched_directory: Some(WatchedDirectory { path: s("/w") }),
            only_verify_leaf_cert_crl: true,
            ..Default::default()
        };
        let bytes = cat(&[
            &ld(0x12, b"h"),             // verify_certificate_hash = 2
            &ld(0x1a, b"k"),             // verify_certificate_spki = 3
            &ld(0x3a, &ld(0x12, b"c")),  // crl = 7
            &[0x40, 1],                  // allow_expired_certificate = 8
            &[0x50, 1],                  // trust_chain_verification = 10
            &ld(0x5a, &ld(0x0a, b"/w")), // watched_directory = 11
            &[0x70, 1],                  // only_verify_leaf_cert_crl = 14
        ]);
        golden(&msg, &bytes);
    }

    #[test]
    fn data_source_variants_and_generic_secret() {
        let file = DataSource {
            specifier: Some(Specifier::Filename(s("/f"))),
            watched_directory: Some(WatchedDirectory { path: s("/") }),
        };
        // filename = 1, watched_directory = 5
        golden(&file, &cat(&[&ld(0x0a, b"/f"), &ld(0x2a, &ld(0x0a, b"/"))]));
        let string = DataSource {
            specifier: Some(Specifier::InlineString(s("x"))),
            watched_directory: None,
        };
        golden(&string, &ld(0x1a, b"x")); // inline_string = 3
        let env = DataSource {
            specifier: Some(Specifier::EnvironmentVariable(s("E"))),
            watched_directory: None,
        };
        golden(&env, &ld(0x22, b"E")); // environment_variable = 4

        let msg = Secret {
            name: s("g"),
            r#type: Some(secret::Type::GenericSecret(GenericSecret {
                secret: Some(string),
                secrets: HashMap::new(),
            })),
        };
        // generic_secret = 5 {secret = 1}
        golden(
            &msg,
            &cat(&[&ld(0x0a, b"g"), &ld(0x2a, &ld(0x0a, &ld(0x1a, b"x")))]),
        );
    }

    #[test]
    fn type_urls() {
        assert_eq!(Secret::type_url(), signet_proto::SDS_SECRET_TYPE_URL);
        assert_eq!(
            SpiffeCertValidatorConfig::type_url(),
            signet_proto::SPIFFE_CERT_VALIDATOR_CONFIG_TYPE_URL
        );
        let secret = Secret {
            name: s("default"),
            r#type: None,
        };
        let any = prost_types::Any::from_msg(&secret).unwrap();
        assert_eq!(any.type_url, signet_proto::SDS_SECRET_TYPE_URL);
        assert_eq!(any.to_msg::<Secret>().unwrap(), secret);
    }
}

mod issuer {
    use super::*;
    use signet_proto::issuer::v1::*;

    #[test]
    fn join_request() {
        let msg = JoinRequest {
            credential: Some(join_request::Credential::ServiceAccountToken(s("t"))),
            csr: vec![0x30],
            node_name: s("n"),
        };
        // service_account_token = 2, csr = 3, node_name = 4
        golden(
            &msg,
            &cat(&[&ld(0x12, b"t"), &ld(0x1a, &[0x30]), &ld(0x22, b"n")]),
        );
        let msg = JoinRequest {
            credential: Some(join_request::Credential::JoinToken(s("j"))),
            ..Default::default()
        };
        golden(&msg, &ld(0x0a, b"j")); // join_token = 1
    }

    #[test]
    fn policy_update() {
        let msg = PolicyUpdate {
            version: 7,
            trust_domain: s("td"),
            policy: b"{}".to_vec().into(),
            trust_bundle: b"b".to_vec(),
            federated_bundles: HashMap::from([(s("f"), b"x".to_vec())]),
            bundle_sequence: 9,
            node: None,
            tainted_x509_authorities: vec![s("ab"), s("cd")],
            tainted_jwt_authorities: vec![s("k")],
            delta: Some(PolicyDelta {
                base_version: 1,
                workload_identities: vec![b"w".to_vec().into()],
                roles: vec![b"r".to_vec().into()],
                removed_workload_identities: vec![s("x")],
                removed_roles: vec![s("y")],
            }),
            partial: true,
        };
        let entry = cat(&[&ld(0x0a, b"f"), &ld(0x12, b"x")]);
        // tainted_x509_authorities = 8 (one field per entry),
        // tainted_jwt_authorities = 9
        let bytes = cat(&[
            &[0x08, 7],
            &ld(0x12, b"td"),
            &ld(0x1a, b"{}"),
            &ld(0x22, b"b"),
            &ld(0x2a, &entry),
            &[0x30, 9],
            &ld(0x42, b"ab"),
            &ld(0x42, b"cd"),
            &ld(0x4a, b"k"),
            // delta = 10: base_version = 1, workload_identities = 2,
            // roles = 3, removed_workload_identities = 4, removed_roles = 5
            &ld(
                0x52,
                &cat(&[
                    &[0x08, 1],
                    &ld(0x12, b"w"),
                    &ld(0x1a, b"r"),
                    &ld(0x22, b"x"),
                    &ld(0x2a, b"y"),
                ]),
            ),
            // partial = 11
            &[0x58, 1],
        ]);
        golden(&msg, &bytes);
    }

    #[test]
    fn watch_policy_request() {
        let msg = WatchPolicyRequest {
            known_version: 5,
            agent_version: s("v"),
            accepts_policy_deltas: true,
            accepts_policy_parts: true,
        };
        // accepts_policy_deltas = 3, accepts_policy_parts = 4
        golden(
            &msg,
            &cat(&[&[0x08, 5], &ld(0x12, b"v"), &[0x18, 1], &[0x20, 1]]),
        );
    }

    #[test]
    fn node_pods_update() {
        let msg = NodePodsUpdate {
            snapshot: true,
            pods: vec![BoundPod {
                uid: s("u"),
                namespace: s("n"),
                name: s("p"),
                service_account: s("a"),
                labels: [(s("k"), s("v"))].into(),
                bound_at_unix_ms: 300,
                terminating: true,
            }],
            removed_pod_uids: vec![s("gone")],
        };
        // snapshot = 1, pods = 2, removed_pod_uids = 3; BoundPod: uid = 1,
        // namespace = 2, name = 3, service_account = 4, labels = 5 (map
        // entries), bound_at_unix_ms = 6 (varint 300 = ac 02),
        // terminating = 7
        let entry = cat(&[&ld(0x0a, b"k"), &ld(0x12, b"v")]);
        let pod = cat(&[
            &ld(0x0a, b"u"),
            &ld(0x12, b"n"),
            &ld(0x1a, b"p"),
            &ld(0x22, b"a"),
            &ld(0x2a, &entry),
            &[0x30, 0xac, 0x02],
            &[0x38, 1],
        ]);
        golden(
            &msg,
            &cat(&[&[0x08, 1], &ld(0x12, &pod), &ld(0x1a, b"gone")]),
        );
        golden(&WatchNodePodsRequest {}, &[]);
    }

    #[test]
    fn sign_results_and_denials() {
        let msg = SignX509SvidsResponse {
            results: vec![
                X509SvidResult {
                    result: Some(x509_svid_result::Result::Svid(X509Svid {
                        spiffe_id: s("i"),
                        serial: s("01"),
                        ..Default::default()
                    })),
                },
                X509SvidResult {
                    result: Some(x509_svid_result::Result::Denial(Denial {
                        reason: s("role_denied"),
                        message: s("m"),
                        retryable: true,
                    })),
                },
            ],
        };
        let svid = cat(&[&ld(0x12, b"i"), &ld(0x3a, b"01")]); // spiffe_id = 2, serial = 7
        // reason = 1, message = 2, retryable = 3 (varint)
        let denial = cat(&[&ld(0x0a, b"role_denied"), &ld(0x12, b"m"), &[0x18, 1]]);
        let bytes = cat(&[
            &ld(0x0a, &ld(0x0a, &svid)),   // results = 1 {svid = 1}
            &ld(0x0a, &ld(0x12, &denial)), // results = 1 {denial = 2}
        ]);
        golden(&msg, &bytes);
    }

    #[test]
    fn pod_svids_update() {
        let msg = PodSvidsUpdate {
            svids: vec![PodSvid {
                spiffe_id: s("i"),
                cert_chain: vec![vec![1], vec![2]],
                private_key: vec![3],
                hint: s("h"),
                expires_at_unix: 5,
            }],
            bundle: vec![vec![4]],
            federated_bundles: HashMap::new(),
        };
        let svid = cat(&[
            &ld(0x0a, b"i"),
            &ld(0x12, &[1]),
            &ld(0x12, &[2]),
            &ld(0x1a, &[3]),
            &ld(0x22, b"h"),
            &[0x28, 5],
        ]);
        golden(&msg, &cat(&[&ld(0x0a, &svid), &ld(0x12, &[4])]));
    }
}
