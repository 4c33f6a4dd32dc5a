//! Reading `/proc/self/mountinfo` to tell whether a path is a mount point.

use std::path::{Path, PathBuf};

/// One line of mountinfo (only the fields signet-csi needs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Path of the mounted directory inside its filesystem (field 4).
    pub root: PathBuf,
    /// Where it is mounted (field 5).
    pub mount_point: PathBuf,
    /// Per-mount options (field 6), e.g. `ro,nosuid,nodev,noexec,relatime`.
    pub options: Vec<String>,
    /// Filesystem type (first field after the ` - ` separator), e.g. `tmpfs`.
    pub fs_type: String,
    /// Mount source (the field after the type): a device, or the name given
    /// to a virtual filesystem such as a tmpfs.
    pub source: String,
}

impl MountEntry {
    pub fn has_option(&self, option: &str) -> bool {
        self.options.iter().any(|o| o == option)
    }
}

/// Parses mountinfo text; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            // The optional fields between the options and the type vary in
            // number; a lone "-" ends them.
            let (mount, filesystem) = line.split_once(" - ")?;
            let mut fields = mount.split(' ');
            let root = fields.nth(3)?;
            let mount_point = fields.next()?;
            let options = fields.next()?;
            let mut filesystem = filesystem.split(' ');
            let fs_type = filesystem.next()?;
            let source = filesystem.next()?;
            Some(MountEntry {
                root: PathBuf::from(unescape(root)),
                mount_point: PathBuf::from(unescape(mount_point)),
                options: options.split(',').map(str::to_owned).collect(),
                fs_type: unescape(fs_type),
                source: unescape(source),
            })
        })
        .collect()
}

/// Undoes the kernel's octal escaping of space, tab, newline and backslash.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && bytes.len() >= i + 4
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = (u32::from(bytes[i + 1] - b'0') << 6)
                | (u32::from(bytes[i + 2] - b'0') << 3)
                | u32::from(bytes[i + 3] - b'0');
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The current process's mount table.
pub fn read() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse(&std::fs::read_to_string("/proc/self/mountinfo")?))
}

/// The topmost mount at exactly `path` (later lines are mounted on top of
/// earlier ones), if any.
pub fn mount_at<'a>(entries: &'a [MountEntry], path: &Path) -> Option<&'a MountEntry> {
    entries.iter().rev().find(|e| e.mount_point == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
95 22 0:45 /run/signet /var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/spiffe/mount ro,nosuid,nodev,noexec,relatime shared:50 - tmpfs tmpfs rw
96 22 8:1 /with\\040space /mnt/a\\040b rw - ext4 /dev/sda1 rw
97 22 8:1 /other /var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/spiffe/mount rw - ext4 /dev/sda1 rw
98 22 0:46 / /var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/svid/mount rw,nosuid,nodev,noexec shared:51 master:2 - tmpfs signet-csi rw,size=1024k
garbage
";

    #[test]
    fn parses_and_unescapes() {
        let entries = parse(SAMPLE);
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[1].fs_type, "tmpfs");
        assert_eq!(entries[0].source, "/dev/sda1");
        // Two optional fields before the separator.
        assert_eq!(entries[4].fs_type, "tmpfs");
        assert_eq!(entries[4].source, "signet-csi");
        assert!(entries[4].has_option("noexec"));
        assert_eq!(entries[1].root, PathBuf::from("/run/signet"));
        assert!(entries[1].has_option("ro"));
        assert!(entries[1].has_option("noexec"));
        assert!(!entries[0].has_option("ro"));
        assert_eq!(entries[2].mount_point, PathBuf::from("/mnt/a b"));
        assert_eq!(entries[2].root, PathBuf::from("/with space"));
    }

    #[test]
    fn topmost_mount_wins() {
        let entries = parse(SAMPLE);
        let top = mount_at(
            &entries,
            Path::new("/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/spiffe/mount"),
        )
        .unwrap();
        assert_eq!(top.root, PathBuf::from("/other"));
        assert!(mount_at(&entries, Path::new("/var/lib/kubelet")).is_none());
    }

    #[test]
    fn unescape_edge_cases() {
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("tail\\04"), "tail\\04");
        assert_eq!(unescape("\\011\\012"), "\t\n");
        assert_eq!(unescape("no-escapes"), "no-escapes");
    }
}
