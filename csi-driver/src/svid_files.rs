//! Files mode's files: rendering the agent's PodSvidsUpdate (and JWTs) as
//! PEM and token files, and replacing them in a volume's tmpfs.
//!
//! Layout, as Kubernetes lays out Secret volumes: each set of files is
//! written into a fresh hidden directory (`..<time>`), `..data` is a
//! symlink to the current one, and every visible name (`svid.pem`, ...) is
//! a symlink into `..data/`. A new set is written and fsynced under its own
//! directory, then `..data` is replaced with one `rename(2)`: readers see
//! either the whole old set or the whole new set, so `svid.pem` and
//! `svid_key.pem` always belong together, and a reader that opened the old
//! `svid.pem` keeps reading the old content. The old directory is removed
//! afterwards (open files stay readable until closed).
//!
//! Every write goes through a descriptor of the volume directory that was
//! checked to be a files-mode tmpfs, so a key never lands on the node's
//! disk even if the tmpfs disappeared underneath.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rustix::fs::{AtFlags, Mode, OFlags};
use signet_proto::issuer::v1 as pb;
use zeroize::Zeroizing;

use crate::mounts;
use crate::pod_info::{Audience, MountGroup};

/// The symlink naming the current set of files.
pub const DATA_LINK: &str = "..data";
const DATA_LINK_TEMP: &str = "..data_tmp";
/// `statfs(2)` f_type of tmpfs.
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// Mode of certificates and bundles: public.
const PUBLIC_MODE: u32 = 0o644;
/// Mode of keys and JWTs when the pod's fsGroup is known: root and the group.
const GROUP_SECRET_MODE: u32 = 0o640;
/// Mode of keys and JWTs otherwise: every user of the pod may read them
/// (the tmpfs is the pod's own; this is what a Secret volume's default
/// 0644 does too), since the driver cannot know which uid the containers
/// run as.
const POD_SECRET_MODE: u32 = 0o644;

#[derive(Debug, thiserror::Error)]
pub enum SvidFilesError {
    #[error("the agent sent no SVID")]
    NoSvid,
    #[error("the agent sent an SVID for {spiffe_id} without {what}")]
    Incomplete {
        spiffe_id: String,
        what: &'static str,
    },
    #[error("the agent sent a malformed certificate list: {0}")]
    Der(String),
    #[error(
        "{path} is no longer a signet-csi tmpfs; refusing to write keys there \
         (unpublish and publish the volume again)"
    )]
    NotOurTmpfs { path: PathBuf },
    #[error("{op} in {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One file of a set.
pub struct OutputFile {
    pub name: String,
    pub contents: Zeroizing<Vec<u8>>,
    /// Keys and JWTs: readable by the pod's group only, when known.
    pub secret: bool,
}

/// Every file of one volume at one moment.
#[derive(Default)]
pub struct FileSet {
    pub files: Vec<OutputFile>,
}

impl FileSet {
    pub fn names(&self) -> BTreeSet<&str> {
        self.files.iter().map(|f| f.name.as_str()).collect()
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn certs_pem<'a>(certs: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    certs
        .into_iter()
        .map(|der| pem("CERTIFICATE", der))
        .collect::<String>()
        .into_bytes()
}

/// Splits concatenated DER certificates (each a SEQUENCE with a definite
/// length), as the Workload API and the delegated API send federated
/// bundles.
pub fn split_der(mut der: &[u8]) -> Result<Vec<&[u8]>, SvidFilesError> {
    let malformed = |why: &str| SvidFilesError::Der(why.to_owned());
    let mut certs = Vec::new();
    while !der.is_empty() {
        let (&tag, rest) = der.split_first().ok_or_else(|| malformed("empty"))?;
        if tag != 0x30 {
            return Err(malformed("not a SEQUENCE"));
        }
        let (&first, rest) = rest.split_first().ok_or_else(|| malformed("no length"))?;
        let (length, header) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return Err(malformed("bad length"));
            }
            let length = rest[..count]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (length, 2 + count)
        };
        let total = header
            .checked_add(length)
            .filter(|total| *total <= der.len())
            .ok_or_else(|| malformed("truncated"))?;
        certs.push(&der[..total]);
        der = &der[total..];
    }
    Ok(certs)
}

/// The files for `update` (which must hold at least one SVID) and the
/// JWT-SVIDs fetched for it:
///
/// - `svid.pem` (the default SVID's chain, leaf first), `svid_key.pem`
///   (its PKCS#8 key), and `svid.N.pem`/`svid_key.N.pem` for further SVIDs
///   (N = 1, 2, ... in the agent's order), as `signet-agent api fetch x509
///   --write` names them;
/// - `bundle.pem`: the trust domain's CA certificates;
/// - `federated_bundle.<trust domain>.pem` per federated trust domain;
/// - `jwt_<audience>.token`: the default identity's JWT-SVID.
pub fn render(
    update: &pb::PodSvidsUpdate,
    jwts: &[(Audience, Zeroizing<String>)],
) -> Result<FileSet, SvidFilesError> {
    if update.svids.is_empty() {
        return Err(SvidFilesError::NoSvid);
    }
    let mut set = FileSet::default();
    for (index, svid) in update.svids.iter().enumerate() {
        let incomplete = |what| SvidFilesError::Incomplete {
            spiffe_id: svid.spiffe_id.clone(),
            what,
        };
        if svid.cert_chain.is_empty() {
            return Err(incomplete("a certificate"));
        }
        if svid.private_key.is_empty() {
            return Err(incomplete("a private key"));
        }
        let (cert, key) = if index == 0 {
            ("svid.pem".to_owned(), "svid_key.pem".to_owned())
        } else {
            (format!("svid.{index}.pem"), format!("svid_key.{index}.pem"))
        };
        set.files.push(OutputFile {
            name: cert,
            contents: Zeroizing::new(certs_pem(svid.cert_chain.iter().map(Vec::as_slice))),
            secret: false,
        });
        set.files.push(OutputFile {
            name: key,
            contents: Zeroizing::new(pem("PRIVATE KEY", &svid.private_key).into_bytes()),
            secret: true,
        });
    }
    set.files.push(OutputFile {
        name: "bundle.pem".to_owned(),
        contents: Zeroizing::new(certs_pem(update.bundle.iter().map(Vec::as_slice))),
        secret: false,
    });
    let mut federated: Vec<(&String, &Vec<u8>)> = update.federated_bundles.iter().collect();
    federated.sort();
    for (trust_domain, der) in federated {
        let name = trust_domain
            .strip_prefix("spiffe://")
            .unwrap_or(trust_domain);
        // Trust domain names are lowercase letters, digits, '.', '-', '_'.
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !plain {
            tracing::warn!(
                trust_domain,
                "skipping a federated bundle whose name is not a trust domain"
            );
            continue;
        }
        set.files.push(OutputFile {
            name: format!("federated_bundle.{name}.pem"),
            contents: Zeroizing::new(certs_pem(split_der(der)?)),
            secret: false,
        });
    }
    for (audience, token) in jwts {
        set.files.push(OutputFile {
            name: audience.file_name(),
            contents: Zeroizing::new(token.as_bytes().to_vec()),
            secret: true,
        });
    }
    Ok(set)
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SvidFilesError + 'a {
    move |source| SvidFilesError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

fn errno<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(rustix::io::Errno) -> SvidFilesError + 'a {
    move |errno| SvidFilesError::Io {
        op,
        path: path.to_owned(),
        source: errno.into(),
    }
}

/// Opens the volume directory, checked to be a files-mode tmpfs.
fn open_volume(target: &Path) -> Result<rustix::fd::OwnedFd, SvidFilesError> {
    let dir = rustix::fs::open(
        target,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno("opening the volume", target))?;
    let statfs = rustix::fs::fstatfs(&dir).map_err(errno("inspecting the volume", target))?;
    let is_tmpfs = u64::try_from(statfs.f_type).is_ok_and(|t| t == TMPFS_MAGIC);
    let ours = mounts::is_files_mount(target).unwrap_or(false);
    if !is_tmpfs || !ours {
        return Err(SvidFilesError::NotOurTmpfs {
            path: target.to_owned(),
        });
    }
    Ok(dir)
}

fn entries(dir: &impl AsFd, path: &Path) -> Result<Vec<(String, bool)>, SvidFilesError> {
    let listing = rustix::fs::Dir::read_from(dir).map_err(errno("listing", path))?;
    let mut names = Vec::new();
    for entry in listing {
        let entry = entry.map_err(errno("listing", path))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "." || name == ".." {
            continue;
        }
        names.push((name, entry.file_type() == rustix::fs::FileType::Directory));
    }
    Ok(names)
}

/// A fresh name for a set's directory, from the time it is written.
fn data_dir_name(existing: &[(String, bool)], written_at: SystemTime) -> String {
    let now = written_at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let base = format!("..{}.{:09}", now.as_secs(), now.subsec_nanos());
    let mut name = base.clone();
    let mut n = 0;
    while existing.iter().any(|(taken, _)| *taken == name) {
        n += 1;
        name = format!("{base}.{n}");
    }
    name
}

fn write_file(
    data: &impl AsFd,
    data_path: &Path,
    file: &OutputFile,
    group: Option<MountGroup>,
) -> Result<(), SvidFilesError> {
    let path = data_path.join(&file.name);
    let mode = match (file.secret, group) {
        (false, _) => PUBLIC_MODE,
        (true, Some(_)) => GROUP_SECRET_MODE,
        (true, None) => POD_SECRET_MODE,
    };
    // Created with its final mode (never wider) before any byte is written.
    let fd = rustix::fs::openat(
        data,
        file.name.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode & GROUP_SECRET_MODE),
    )
    .map_err(errno("creating", &path))?;
    if let Some(group) = group {
        rustix::fs::fchown(&fd, None, Some(rustix::process::Gid::from_raw(group.gid())))
            .map_err(errno("setting the group of", &path))?;
    }
    // Exact mode regardless of the umask.
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
        .map_err(errno("setting the mode of", &path))?;
    let mut file_handle = File::from(fd);
    file_handle
        .write_all(&file.contents)
        .and_then(|()| file_handle.sync_all())
        .map_err(io("writing", &path))
}

/// Replaces the volume's files with `set` (see the module documentation),
/// with keys and JWTs for `group` when the pod has an fsGroup.
pub fn write_set(
    target: &Path,
    set: &FileSet,
    group: Option<MountGroup>,
    written_at: SystemTime,
) -> Result<(), SvidFilesError> {
    let volume = open_volume(target)?;
    let before = entries(&volume, target)?;
    let data_name = data_dir_name(&before, written_at);
    let data_path = target.join(&data_name);
    rustix::fs::mkdirat(&volume, data_name.as_str(), Mode::from_raw_mode(0o755))
        .map_err(errno("creating", &data_path))?;
    rustix::fs::chmodat(
        &volume,
        data_name.as_str(),
        Mode::from_raw_mode(0o755),
        AtFlags::empty(),
    )
    .map_err(errno("setting the mode of", &data_path))?;
    let written = (|| {
        let data = rustix::fs::openat(
            &volume,
            data_name.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno("opening", &data_path))?;
        for file in &set.files {
            write_file(&data, &data_path, file, group)?;
        }
        rustix::fs::fsync(&data).map_err(errno("syncing", &data_path))
    })();
    if let Err(error) = written {
        remove_tree(&volume, &data_name, target);
        return Err(error);
    }

    // The switch: one rename replaces the whole set.
    let _ = rustix::fs::unlinkat(&volume, DATA_LINK_TEMP, AtFlags::empty());
    rustix::fs::symlinkat(data_name.as_str(), &volume, DATA_LINK_TEMP)
        .map_err(errno("linking", &target.join(DATA_LINK_TEMP)))?;
    rustix::fs::renameat(&volume, DATA_LINK_TEMP, &volume, DATA_LINK)
        .map_err(errno("switching", &target.join(DATA_LINK)))?;

    // Visible names: a symlink into ..data/ for every file of the set (made
    // once, then left alone), and none for files the set no longer has.
    let wanted = set.names();
    for name in &wanted {
        let link_target = format!("{DATA_LINK}/{name}");
        let current = rustix::fs::readlinkat(&volume, *name, Vec::new()).ok();
        if current.as_ref().map(|c| c.as_bytes()) == Some(link_target.as_bytes()) {
            continue;
        }
        let temp = format!(".{name}.link");
        let _ = rustix::fs::unlinkat(&volume, temp.as_str(), AtFlags::empty());
        rustix::fs::symlinkat(link_target.as_str(), &volume, temp.as_str())
            .map_err(errno("linking", &target.join(name)))?;
        rustix::fs::renameat(&volume, temp.as_str(), &volume, *name)
            .map_err(errno("linking", &target.join(name)))?;
    }
    for (name, is_dir) in &before {
        if *name == data_name || name == DATA_LINK {
            continue;
        }
        if *is_dir {
            // An older set (readers with open files keep them).
            remove_tree(&volume, name, target);
        } else if !wanted.contains(name.as_str()) {
            let _ = rustix::fs::unlinkat(&volume, name.as_str(), AtFlags::empty());
        }
    }
    rustix::fs::fsync(&volume).map_err(errno("syncing", target))
}

/// Removes a set's directory (flat: it only ever holds files).
fn remove_tree(volume: &impl AsFd, name: &str, target: &Path) {
    if let Ok(dir) = rustix::fs::openat(
        volume,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) && let Ok(files) = entries(&dir, &target.join(name))
    {
        for (file, _) in files {
            let _ = rustix::fs::unlinkat(&dir, file.as_str(), AtFlags::empty());
        }
    }
    let _ = rustix::fs::unlinkat(volume, name, AtFlags::REMOVEDIR);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(len: usize, fill: u8) -> Vec<u8> {
        let mut out = vec![0x30];
        if len < 0x80 {
            out.push(u8::try_from(len).unwrap());
        } else {
            out.push(0x82);
            out.extend_from_slice(&u16::try_from(len).unwrap().to_be_bytes());
        }
        out.extend(std::iter::repeat_n(fill, len));
        out
    }

    fn update() -> pb::PodSvidsUpdate {
        pb::PodSvidsUpdate {
            svids: vec![
                pb::PodSvid {
                    spiffe_id: "spiffe://example.org/a".into(),
                    cert_chain: vec![der(10, 1), der(300, 2)],
                    private_key: vec![7; 20],
                    hint: "a".into(),
                    expires_at_unix: 1,
                },
                pb::PodSvid {
                    spiffe_id: "spiffe://example.org/b".into(),
                    cert_chain: vec![der(5, 3)],
                    private_key: vec![8; 20],
                    hint: String::new(),
                    expires_at_unix: 1,
                },
            ],
            bundle: vec![der(20, 4)],
            federated_bundles: [(
                "spiffe://partner.org".to_owned(),
                [der(3, 5), der(200, 6)].concat(),
            )]
            .into(),
        }
    }

    #[test]
    fn der_lists_are_split_and_malformed_ones_refused() {
        let joined = [der(3, 1), der(200, 2), der(0x1234, 3)].concat();
        let parts = split_der(&joined).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[1].len(), 204);
        assert!(split_der(&[]).unwrap().is_empty());
        assert!(split_der(&[0x31, 0]).is_err());
        assert!(split_der(&[0x30, 5, 1]).is_err());
        assert!(split_der(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_err());
    }

    #[test]
    fn files_are_named_like_the_agent_cli_writes_them() {
        let jwts = vec![(
            Audience::new("vault").unwrap(),
            Zeroizing::new("h.p.s".to_owned()),
        )];
        let set = render(&update(), &jwts).unwrap();
        let names: Vec<&str> = set.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "svid.pem",
                "svid_key.pem",
                "svid.1.pem",
                "svid_key.1.pem",
                "bundle.pem",
                "federated_bundle.partner.org.pem",
                "jwt_vault.token"
            ]
        );
        let secret: Vec<&str> = set
            .files
            .iter()
            .filter(|f| f.secret)
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(
            secret,
            ["svid_key.pem", "svid_key.1.pem", "jwt_vault.token"]
        );
        let chain = String::from_utf8(set.files[0].contents.to_vec()).unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(chain.lines().all(|line| line.len() <= 64));
        let key = String::from_utf8(set.files[1].contents.to_vec()).unwrap();
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let federated = String::from_utf8(set.files[5].contents.to_vec()).unwrap();
        assert_eq!(federated.matches("BEGIN CERTIFICATE").count(), 2);
        assert_eq!(&set.files[6].contents[..], b"h.p.s");
    }

    #[test]
    fn incomplete_updates_are_refused() {
        assert!(matches!(
            render(&pb::PodSvidsUpdate::default(), &[]),
            Err(SvidFilesError::NoSvid)
        ));
        let mut keyless = update();
        keyless.svids[1].private_key.clear();
        assert!(matches!(
            render(&keyless, &[]),
            Err(SvidFilesError::Incomplete { .. })
        ));
        let mut odd = update();
        odd.federated_bundles
            .insert("spiffe://../evil".into(), der(1, 1));
        let set = render(&odd, &[]).unwrap();
        assert!(set.names().iter().all(|name| !name.contains("evil")));
    }

    #[test]
    fn writing_outside_a_files_tmpfs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let set = render(&update(), &[]).unwrap();
        let error = write_set(
            dir.path(),
            &set,
            None,
            UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000),
        )
        .unwrap_err();
        assert!(
            matches!(error, SvidFilesError::NotOurTmpfs { .. }),
            "{error}"
        );
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }
}
