//! Locating a process's container and pod from `/proc/<pid>/cgroup`.
//!
//! Only the kernel's cgroup file is consulted. `/proc/<pid>/mountinfo` is
//! deliberately never used: a workload controls its own mount namespace and
//! can forge the cgroup mount roots listed there.
//!
//! Layouts handled (each has a fixture in the tests):
//! - cgroup v1, cgroupfs driver: `/kubepods/burstable/pod<uid>/<cid>`
//! - systemd driver: `kubepods-burstable-pod<uid_>.slice/cri-containerd-<cid>.scope`,
//!   `crio-<cid>.scope`, `docker-<cid>.scope`, and containerd's
//!   `...pod<uid_>.slice:cri-containerd:<cid>` form
//! - cgroup v2 (`0::/...`), with or without a pod segment
//! - nested nodes (kind): `/docker/<host cid>/kubepods/.../pod<uid>/<cid>`
//! - cgroup namespaces: `/../../pod<uid>/<cid>`
//! - Guaranteed QoS pods (no QoS segment)
//! - plain Docker (`/docker/<cid>`, `docker-<cid>.scope`) and Podman
//!   (`libpod-<cid>.scope`, optionally followed by `/container`)
//! - static (file or URL) pods, whose UID is the kubelet's 32-hex-digit hash
//!   of the manifest rather than a UUID: `/kubepods/pod<hash>/<cid>`
//!
//! Besides the IDs, the parser reports which runtime the path names, when it
//! names one ([`ContainerRuntime`]). The Docker and Podman attestors use it to
//! tell "a container of another runtime" (nothing to say) from "our container
//! that the engine cannot find" (an error).
//!
//! Runtime monitor processes (`crio-conmon-<cid>.scope`,
//! `libpod-conmon-<cid>.scope`) are not the container's workload and are
//! never attributed to it.

use std::fmt;

/// Length of a container ID as written by containerd, CRI-O, Docker and Podman.
const CONTAINER_ID_LEN: usize = 64;
/// Length of a pod UID (an RFC 4122 UUID in text form).
const POD_UID_LEN: usize = 36;
/// Length of a static pod's UID: the kubelet uses the hex MD5 of the manifest.
const STATIC_POD_UID_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CgroupError {
    #[error("cgroup entries name different containers: {first} and {second}")]
    ConflictingContainerIds { first: String, second: String },
    #[error("cgroup entries name different pods: {first} and {second}")]
    ConflictingPodUids { first: String, second: String },
    #[error("malformed cgroup line {line}: {reason}")]
    Malformed { line: usize, reason: &'static str },
}

/// A container ID: 64 lowercase hexadecimal characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(String);

impl ContainerId {
    /// Parses a bare 64-character hex ID (any case; stored lowercase).
    pub fn parse(value: &str) -> Option<Self> {
        (value.len() == CONTAINER_ID_LEN && value.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| Self(value.to_ascii_lowercase()))
    }

    /// Parses a runtime-qualified ID as the kubelet reports it
    /// (`containerd://<id>`, `cri-o://<id>`, `docker://<id>`) or a bare ID.
    pub fn parse_qualified(value: &str) -> Option<Self> {
        let bare = value.rsplit_once("://").map_or(value, |(_, id)| id);
        Self::parse(bare)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A pod UID in canonical form (lowercase, dash separated).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodUid(String);

impl PodUid {
    /// Parses a UUID whose groups are separated by `-` or, as systemd escapes
    /// them in slice names, by `_`; or a static pod's 32-hex-digit UID.
    pub fn parse(value: &str) -> Option<Self> {
        if value.len() == STATIC_POD_UID_LEN {
            return value
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
                .then(|| Self(value.to_ascii_lowercase()));
        }
        if value.len() != POD_UID_LEN {
            return None;
        }
        let mut canonical = String::with_capacity(POD_UID_LEN);
        for (index, byte) in value.bytes().enumerate() {
            let separator = matches!(index, 8 | 13 | 18 | 23);
            match (separator, byte) {
                (true, b'-' | b'_') => canonical.push('-'),
                (false, b) if b.is_ascii_hexdigit() => {
                    canonical.push(b.to_ascii_lowercase() as char)
                }
                _ => return None,
            }
        }
        Some(Self(canonical))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PodUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The container runtime a cgroup path names, when it names one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ContainerRuntime {
    /// `docker-<cid>.scope`, or `<cid>` directly under a `docker` cgroup.
    Docker,
    /// `libpod-<cid>`.
    Podman,
    /// `cri-containerd-<cid>.scope` or `...:cri-containerd:<cid>`.
    Containerd,
    /// `crio-<cid>.scope`.
    CriO,
}

/// What the cgroup file says about the process's container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Present when the process runs in a container.
    pub container_id: Option<ContainerId>,
    /// Present when the container belongs to a Kubernetes pod and the layout
    /// names the pod (cgroup v2 under CRI-O may not).
    pub pod_uid: Option<PodUid>,
    /// The runtime named by the path around the container ID. `None` when
    /// the layout does not say (e.g. cgroupfs `/kubepods/.../pod<uid>/<cid>`,
    /// which any CRI runtime, or Docker via cri-dockerd, may produce).
    pub runtime: Option<ContainerRuntime>,
}

impl ContainerInfo {
    pub fn is_container(&self) -> bool {
        self.container_id.is_some()
    }
}

/// Parses the contents of `/proc/<pid>/cgroup`.
///
/// A process outside any container yields an empty [`ContainerInfo`], not an
/// error. Entries that disagree about the container or the pod are an error:
/// the answer would otherwise depend on line order.
pub fn parse_proc_cgroup(contents: &str) -> Result<ContainerInfo, CgroupError> {
    let mut found = ContainerInfo::default();
    for (index, line) in contents.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        // hierarchy-ID:controller-list:cgroup-path; the path itself may hold ':'.
        let mut fields = line.splitn(3, ':');
        let (Some(_hierarchy), Some(_controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(CgroupError::Malformed {
                line: index + 1,
                reason: "expected hierarchy-ID:controllers:path",
            });
        };
        let entry = parse_cgroup_path(path);
        merge(&mut found, entry)?;
    }
    Ok(found)
}

fn merge(found: &mut ContainerInfo, entry: ContainerInfo) -> Result<(), CgroupError> {
    if let Some(id) = entry.container_id {
        match &found.container_id {
            Some(existing) if *existing != id => {
                return Err(CgroupError::ConflictingContainerIds {
                    first: existing.to_string(),
                    second: id.to_string(),
                });
            }
            _ => found.container_id = Some(id),
        }
    }
    // Lines of a hybrid hierarchy may spell the same container differently;
    // the first one that names a runtime wins, as the ID already agrees.
    if found.runtime.is_none() {
        found.runtime = entry.runtime;
    }
    if let Some(uid) = entry.pod_uid {
        match &found.pod_uid {
            Some(existing) if *existing != uid => {
                return Err(CgroupError::ConflictingPodUids {
                    first: existing.to_string(),
                    second: uid.to_string(),
                });
            }
            _ => found.pod_uid = Some(uid),
        }
    }
    Ok(())
}

/// Extracts the container (innermost) and its pod from one cgroup path.
///
/// Walks the path from its last segment backwards: the first container ID
/// met is the process's own container (outer ones belong to a nesting host,
/// as on kind nodes); a pod UID only counts when it encloses that container.
pub fn parse_cgroup_path(path: &str) -> ContainerInfo {
    let mut info = ContainerInfo::default();
    // Set when the container ID was a whole segment: its parent may then
    // name the runtime (`/docker/<cid>`).
    let mut bare_id = false;
    for segment in path.rsplit('/') {
        if info.container_id.is_none() {
            if is_runtime_monitor(segment) {
                // A conmon process shares the container's ID but is not it.
                return ContainerInfo::default();
            }
            if let Some((id, before)) = find_container_id(segment) {
                info.container_id = Some(id);
                info.runtime = runtime_from_prefix(before);
                bare_id = before.is_empty();
                // The containerd systemd form keeps the pod in the same
                // segment: `...pod<uid>.slice:cri-containerd:<cid>`.
                if let Some(uid) = find_pod_uid(before) {
                    info.pod_uid = Some(uid);
                    return info;
                }
            }
            continue;
        }
        if bare_id {
            bare_id = false;
            if segment == "docker" {
                info.runtime = Some(ContainerRuntime::Docker);
            }
        }
        if let Some(uid) = find_pod_uid(segment) {
            info.pod_uid = Some(uid);
            return info;
        }
    }
    info
}

/// The runtime named by the text just before a container ID in a segment.
fn runtime_from_prefix(before: &str) -> Option<ContainerRuntime> {
    if before.ends_with(":cri-containerd:") || before.ends_with("cri-containerd-") {
        Some(ContainerRuntime::Containerd)
    } else if before.ends_with("crio-") {
        Some(ContainerRuntime::CriO)
    } else if before.ends_with("docker-") {
        Some(ContainerRuntime::Docker)
    } else if before.ends_with("libpod-") {
        Some(ContainerRuntime::Podman)
    } else {
        None
    }
}

fn is_runtime_monitor(segment: &str) -> bool {
    segment.contains("conmon-")
}

fn is_word_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
}

/// Finds the last 64-hex run delimited by non-alphanumerics in `segment`;
/// returns it and the text before it.
fn find_container_id(segment: &str) -> Option<(ContainerId, &str)> {
    let bytes = segment.as_bytes();
    if bytes.len() < CONTAINER_ID_LEN {
        return None;
    }
    let mut end = bytes.len();
    while end >= CONTAINER_ID_LEN {
        let start = end - CONTAINER_ID_LEN;
        let bounded_after = end == bytes.len() || !is_word_byte(bytes[end]);
        let bounded_before = start == 0 || !is_word_byte(bytes[start - 1]);
        if bounded_after && bounded_before && bytes[start..end].iter().all(u8::is_ascii_hexdigit) {
            let id = ContainerId::parse(&segment[start..end])?;
            return Some((id, &segment[..start]));
        }
        end -= 1;
    }
    None
}

/// Finds `pod<uid>` delimited by non-alphanumerics (or the segment's ends),
/// where `<uid>` is a UUID or a static pod's 32-hex-digit hash.
fn find_pod_uid(segment: &str) -> Option<PodUid> {
    let bytes = segment.as_bytes();
    let mut search_from = 0;
    while let Some(offset) = segment[search_from..].find("pod") {
        let start = search_from + offset;
        let uid_start = start + 3;
        let bounded_before = start == 0 || !is_word_byte(bytes[start - 1]);
        if bounded_before {
            for len in [POD_UID_LEN, STATIC_POD_UID_LEN] {
                let uid_end = uid_start + len;
                if uid_end > bytes.len() {
                    continue;
                }
                let bounded_after = uid_end == bytes.len() || !is_word_byte(bytes[uid_end]);
                // `get`: the candidate may end inside a multi-byte character.
                if bounded_after
                    && let Some(uid) = segment.get(uid_start..uid_end).and_then(PodUid::parse)
                {
                    return Some(uid);
                }
            }
        }
        search_from = uid_start;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CID: &str = "3e5bcb5a2e7c0b6f1c4cd1c1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5";
    const HOST_CID: &str = "aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999";
    const POD: &str = "2c48913c-b29f-11e7-9350-020968147796";
    const POD_ESCAPED: &str = "2c48913c_b29f_11e7_9350_020968147796";

    fn expect(contents: &str, pod: Option<&str>, cid: Option<&str>) {
        let info = parse_proc_cgroup(contents).unwrap_or_else(|e| panic!("{contents}: {e}"));
        assert_eq!(
            info.pod_uid.as_ref().map(PodUid::as_str),
            pod,
            "pod in {contents}"
        );
        assert_eq!(
            info.container_id.as_ref().map(ContainerId::as_str),
            cid,
            "container in {contents}"
        );
    }

    #[test]
    fn cgroup_v1_cgroupfs_burstable() {
        let contents = format!(
            "12:memory:/kubepods/burstable/pod{POD}/{CID}\n\
             11:cpu,cpuacct:/kubepods/burstable/pod{POD}/{CID}\n\
             1:name=systemd:/kubepods/burstable/pod{POD}/{CID}\n"
        );
        expect(&contents, Some(POD), Some(CID));
    }

    #[test]
    fn cgroup_v1_cgroupfs_besteffort() {
        expect(
            &format!("4:pids:/kubepods/besteffort/pod{POD}/{CID}\n"),
            Some(POD),
            Some(CID),
        );
    }

    #[test]
    fn guaranteed_qos_has_no_qos_segment() {
        expect(
            &format!("9:memory:/kubepods/pod{POD}/{CID}\n"),
            Some(POD),
            Some(CID),
        );
    }

    #[test]
    fn systemd_containerd_scope() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_ESCAPED}.slice/cri-containerd-{CID}.scope"
        );
        expect(
            &format!("5:devices:{path}\n1:name=systemd:{path}\n"),
            Some(POD),
            Some(CID),
        );
    }

    #[test]
    fn systemd_crio_scope() {
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD_ESCAPED}.slice/crio-{CID}.scope"
        );
        expect(&format!("3:cpuset:{path}\n"), Some(POD), Some(CID));
    }

    #[test]
    fn systemd_docker_scope() {
        let path = format!("/kubepods.slice/kubepods-pod{POD_ESCAPED}.slice/docker-{CID}.scope");
        expect(&format!("7:blkio:{path}\n"), Some(POD), Some(CID));
    }

    #[test]
    fn systemd_containerd_colon_form() {
        let path = format!(
            "/system.slice/containerd.service/kubepods-burstable-pod{POD_ESCAPED}.slice:cri-containerd:{CID}"
        );
        expect(
            &format!("1:name=systemd:{path}\n0::{path}\n"),
            Some(POD),
            Some(CID),
        );
    }

    #[test]
    fn cgroup_v2_with_pod() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_ESCAPED}.slice/cri-containerd-{CID}.scope"
        );
        expect(&format!("0::{path}\n"), Some(POD), Some(CID));
    }

    #[test]
    fn cgroup_v2_crio_without_pod() {
        expect(&format!("0::/../crio-{CID}.scope\n"), None, Some(CID));
    }

    #[test]
    fn kind_nested_node() {
        let contents = format!(
            "12:memory:/docker/{HOST_CID}/kubepods/besteffort/pod{POD}/{CID}\n\
             1:name=systemd:/docker/{HOST_CID}/kubepods/besteffort/pod{POD}/{CID}\n"
        );
        expect(&contents, Some(POD), Some(CID));
    }

    #[test]
    fn cgroup_namespace_relative_path() {
        expect(&format!("0::/../../pod{POD}/{CID}\n"), Some(POD), Some(CID));
    }

    #[test]
    fn entry_with_pod_wins_over_entry_without() {
        let contents = format!("0::/../crio-{CID}.scope\n4:memory:/kubepods/pod{POD}/{CID}\n");
        expect(&contents, Some(POD), Some(CID));
    }

    #[test]
    fn host_process_is_not_a_container() {
        let contents = "12:memory:/user.slice/user-1000.slice/session-2.scope\n\
                        1:name=systemd:/user.slice/user-1000.slice/session-2.scope\n0::/\n";
        expect(contents, None, None);
    }

    #[test]
    fn plain_docker_container() {
        expect(&format!("4:memory:/docker/{CID}\n0::/\n"), None, Some(CID));
        expect(
            &format!("0::/system.slice/docker-{CID}.scope\n"),
            None,
            Some(CID),
        );
    }

    #[test]
    fn podman_container() {
        expect(
            &format!("0::/machine.slice/libpod-{CID}.scope/container\n"),
            None,
            Some(CID),
        );
        expect(
            &format!("1:name=systemd:/libpod_parent/libpod-{CID}\n"),
            None,
            Some(CID),
        );
    }

    #[test]
    fn runtime_monitor_is_not_the_container() {
        expect(
            &format!("0::/machine.slice/libpod-conmon-{CID}.scope\n"),
            None,
            None,
        );
        let path =
            format!("/kubepods.slice/kubepods-pod{POD_ESCAPED}.slice/crio-conmon-{CID}.scope");
        expect(&format!("0::{path}\n"), None, None);
    }

    #[test]
    fn pod_slice_without_container_is_not_attributed() {
        // A process in the pod's slice but outside any container (e.g. a
        // runtime helper) must not inherit a container identity.
        expect(&format!("0::/kubepods/burstable/pod{POD}\n"), None, None);
    }

    #[test]
    fn conflicting_containers_are_an_error() {
        let contents =
            format!("4:memory:/kubepods/pod{POD}/{CID}\n5:cpu:/kubepods/pod{POD}/{HOST_CID}\n");
        assert!(matches!(
            parse_proc_cgroup(&contents),
            Err(CgroupError::ConflictingContainerIds { .. })
        ));
    }

    #[test]
    fn conflicting_pods_are_an_error() {
        let other = "11111111-2222-3333-4444-555555555555";
        let contents =
            format!("4:memory:/kubepods/pod{POD}/{CID}\n5:cpu:/kubepods/pod{other}/{CID}\n");
        assert!(matches!(
            parse_proc_cgroup(&contents),
            Err(CgroupError::ConflictingPodUids { .. })
        ));
    }

    #[test]
    fn malformed_line_is_an_error() {
        assert!(matches!(
            parse_proc_cgroup("garbage without colons\n"),
            Err(CgroupError::Malformed { line: 1, .. })
        ));
    }

    #[test]
    fn ids_must_be_delimited() {
        // 65 hex digits: not a container ID.
        expect(&format!("0::/docker/{CID}f\n"), None, None);
        // "xpod<uid>" is not a pod segment.
        expect(&format!("0::/kubepods/xpod{POD}/{CID}\n"), None, Some(CID));
    }

    #[test]
    fn qualified_container_ids() {
        assert_eq!(
            ContainerId::parse_qualified(&format!("containerd://{CID}")).map(|c| c.to_string()),
            Some(CID.to_string())
        );
        assert_eq!(
            ContainerId::parse_qualified(&format!("cri-o://{}", CID.to_uppercase()))
                .map(|c| c.to_string()),
            Some(CID.to_string())
        );
        assert!(ContainerId::parse_qualified("containerd://abc").is_none());
    }

    fn runtime_of(contents: &str) -> Option<ContainerRuntime> {
        parse_proc_cgroup(contents)
            .unwrap_or_else(|e| panic!("{contents}: {e}"))
            .runtime
    }

    #[test]
    fn runtime_is_named_where_the_path_says() {
        use ContainerRuntime::*;
        assert_eq!(
            runtime_of(&format!("4:memory:/docker/{CID}\n")),
            Some(Docker)
        );
        assert_eq!(
            runtime_of(&format!("0::/system.slice/docker-{CID}.scope\n")),
            Some(Docker)
        );
        assert_eq!(
            runtime_of(&format!("0::/machine.slice/libpod-{CID}.scope/container\n")),
            Some(Podman)
        );
        assert_eq!(
            runtime_of(&format!(
                "0::/kubepods.slice/kubepods-pod{POD_ESCAPED}.slice/cri-containerd-{CID}.scope\n"
            )),
            Some(Containerd)
        );
        assert_eq!(
            runtime_of(&format!(
                "1:name=systemd:/system.slice/containerd.service/kubepods-pod{POD_ESCAPED}.slice:cri-containerd:{CID}\n"
            )),
            Some(Containerd)
        );
        assert_eq!(
            runtime_of(&format!("0::/../crio-{CID}.scope\n")),
            Some(CriO)
        );
        // cgroupfs pods do not say which runtime created the container.
        assert_eq!(
            runtime_of(&format!("4:memory:/kubepods/burstable/pod{POD}/{CID}\n")),
            None
        );
        // On a kind node the outer `docker` is the node's container, not the
        // workload's.
        assert_eq!(
            runtime_of(&format!(
                "4:memory:/docker/{HOST_CID}/kubepods/besteffort/pod{POD}/{CID}\n"
            )),
            None
        );
        assert_eq!(runtime_of("0::/user.slice/session-1.scope\n"), None);
    }

    /// Captured from a container started by Debian's dockerd 20.10 on a
    /// cgroup v1 (hybrid) host.
    #[test]
    fn docker_20_10_on_hybrid_cgroup_v1() {
        let cid = "78ce688a43026892c604836dddb74406e3e8d52e7fa76cac7ee89c768ebff77d";
        let contents = [
            "9:name=systemd",
            "8:pids",
            "7:blkio",
            "6:freezer",
            "5:devices",
            "4:memory",
            "3:cpuset",
            "2:cpuacct",
            "1:cpu",
            "0:",
        ]
        .iter()
        .map(|prefix| format!("{prefix}:/docker/{cid}\n"))
        .collect::<String>();
        expect(&contents, None, Some(cid));
        assert_eq!(runtime_of(&contents), Some(ContainerRuntime::Docker));
    }

    /// Captured from a container started by Debian's podman 4.3 (cgroupfs
    /// manager, in a pod without an infra container).
    #[test]
    fn podman_4_3_cgroupfs() {
        let cid = "1e3d7daef42c7b714c81ef180697c80b8750e0546bec7b0c6ad0f352a64f9095";
        let contents = format!(
            "9:name=systemd:/libpod_parent/libpod-{cid}\n4:memory:/libpod_parent/libpod-{cid}\n0::/libpod_parent/libpod-{cid}\n"
        );
        expect(&contents, None, Some(cid));
        assert_eq!(runtime_of(&contents), Some(ContainerRuntime::Podman));
    }

    /// The agent's own sandbox on this machine: a 32-hex memory cgroup that
    /// is neither a container nor a pod.
    #[test]
    fn non_container_hex_cgroups_are_ignored() {
        expect(
            "4:memory:/process_api/d55a7197c164c54a3d0dea05d3c4c25a\n0::/\n",
            None,
            None,
        );
    }

    #[test]
    fn static_pod_uid_is_a_manifest_hash() {
        let hash = "6D3A1C0F9B2E4F8A7C5D3E1F0A9B8C7D";
        expect(
            &format!("4:memory:/kubepods/burstable/pod{hash}/{CID}\n"),
            Some("6d3a1c0f9b2e4f8a7c5d3e1f0a9b8c7d"),
            Some(CID),
        );
        let path = format!("/kubepods.slice/kubepods-pod{hash}.slice/cri-containerd-{CID}.scope");
        expect(
            &format!("0::{path}\n"),
            Some(&hash.to_ascii_lowercase()),
            Some(CID),
        );
        // 33 hex digits are neither form.
        expect(&format!("0::/kubepods/pod{hash}0/{CID}\n"), None, Some(CID));
    }

    #[test]
    fn multibyte_text_after_pod_does_not_panic() {
        let uid_prefix = "2c48913c-b29f-11e7-9350-0209681477";
        for tail in ["é", "€x", "😀", "ée"] {
            let _ = parse_proc_cgroup(&format!("0::/kubepods/pod{uid_prefix}{tail}/{CID}\n"));
            let _ = parse_proc_cgroup(&format!("0::/pod0123456789abcdef0123456789abcd{tail}\n"));
        }
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(input in "\\PC{0,400}") {
            let _ = parse_proc_cgroup(&input);
        }

        #[test]
        fn arbitrary_pod_segments_never_panic(
            prefix in "[a-z_.-]{0,4}",
            body in "[0-9a-f_\\-é€😀:.]{0,45}",
            cid in proptest::option::of("[0-9a-f]{64}"),
        ) {
            let tail = cid.map(|c| format!("/{c}")).unwrap_or_default();
            let _ = parse_proc_cgroup(&format!("0::/kubepods/{prefix}pod{body}{tail}\n"));
        }

        #[test]
        fn arbitrary_paths_never_panic(segments in proptest::collection::vec("[a-z0-9_:.-]{0,80}", 0..8)) {
            let path = format!("/{}", segments.join("/"));
            let _ = parse_proc_cgroup(&format!("0::{path}\n"));
        }

        #[test]
        fn generated_layouts_are_recognised(
            pod in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
            cid in "[0-9a-f]{64}",
            qos in prop_oneof![Just(""), Just("burstable/"), Just("besteffort/")],
            systemd in any::<bool>(),
        ) {
            let path = if systemd {
                let escaped = pod.replace('-', "_");
                format!("/kubepods.slice/kubepods-pod{escaped}.slice/cri-containerd-{cid}.scope")
            } else {
                format!("/kubepods/{qos}pod{pod}/{cid}")
            };
            let info = parse_proc_cgroup(&format!("0::{path}\n")).unwrap();
            prop_assert_eq!(info.pod_uid.map(|p| p.to_string()), Some(pod));
            prop_assert_eq!(info.container_id.map(|c| c.to_string()), Some(cid));
        }
    }
}
