//! Where standalone mode reads the policy from: a directory of the same
//! WorkloadIdentity and Role YAML users would `kubectl apply`.
//!
//! An invalid object never takes the rest down: it is reported and skipped,
//! and if an earlier version of it was valid, that version stays in force
//! until the object is fixed or deleted. A file that is not valid YAML at
//! all keeps the objects it last held.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use signet_identity::TrustDomain;
use signet_policy::snapshot::ObjectKind;
use signet_policy::{LoadError, PolicyDocument, PolicyObject};
use tokio::sync::{mpsc, watch};

use crate::policy_state::PolicyState;

/// Safety net in case a filesystem event is missed (network filesystems,
/// ConfigMap symlink swaps).
const RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// Editors write files in several steps; wait for them to settle.
const DEBOUNCE: Duration = Duration::from_millis(200);

type ObjectKey = (ObjectKind, String);

struct ParsedFile {
    text: String,
    results: Vec<Result<PolicyObject, LoadError>>,
}

/// Reads and watches a policy directory.
pub struct DirectorySource {
    dir: PathBuf,
    trust_domain: TrustDomain,
    version: u64,
    last_good: BTreeMap<ObjectKey, PolicyObject>,
    last_by_file: BTreeMap<PathBuf, Vec<PolicyObject>>,
    /// Each file's text when last read and what it parsed to: a reload
    /// parses only the files whose text changed.
    parsed: BTreeMap<PathBuf, ParsedFile>,
    reported: BTreeSet<String>,
    sender: watch::Sender<Arc<PolicyState>>,
}

fn key_of(object: &PolicyObject) -> Option<ObjectKey> {
    Some((object.kind(), object.name()?.to_owned()))
}

fn kind_of(name: &str) -> Option<ObjectKind> {
    match name {
        "WorkloadIdentity" => Some(ObjectKind::WorkloadIdentity),
        "Role" => Some(ObjectKind::Role),
        _ => None,
    }
}

impl DirectorySource {
    /// Loads `dir` now and returns the source and the policy channel.
    pub fn load(
        dir: PathBuf,
        trust_domain: TrustDomain,
        first_version: u64,
    ) -> (Self, watch::Receiver<Arc<PolicyState>>) {
        let empty = PolicyState::compile(first_version, &trust_domain, &PolicyDocument::default());
        let (sender, receiver) = watch::channel(Arc::new(empty));
        let mut source = Self {
            dir,
            trust_domain,
            version: first_version,
            last_good: BTreeMap::new(),
            last_by_file: BTreeMap::new(),
            parsed: BTreeMap::new(),
            reported: BTreeSet::new(),
            sender,
        };
        source.reload();
        (source, receiver)
    }

    fn policy_files(&self) -> Vec<PathBuf> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) => {
                self.report(format!(
                    "reading policy directory {}: {error}",
                    self.dir.display()
                ));
                return Vec::new();
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| is_policy_file(path))
            .collect();
        files.sort();
        files
    }

    fn report(&self, message: String) {
        tracing::warn!("{message}");
    }

    /// Logs a problem once (reloads repeat them).
    fn report_once(&self, message: String, seen: &mut BTreeSet<String>) {
        if !self.reported.contains(&message) {
            tracing::warn!("{message}");
        }
        seen.insert(message);
    }

    /// Re-reads the directory; returns true when the policy in force changed.
    pub fn reload(&mut self) -> bool {
        let mut seen_problems = BTreeSet::new();
        let mut candidates: Vec<PolicyObject> = Vec::new();
        // Objects whose current document failed to load: keep their last good version.
        let mut failed_keys: BTreeSet<ObjectKey> = BTreeSet::new();
        let mut present_keys: BTreeSet<ObjectKey> = BTreeSet::new();
        let mut by_file = BTreeMap::new();
        let mut parsed_before = std::mem::take(&mut self.parsed);

        for file in self.policy_files() {
            let text = match std::fs::read_to_string(&file) {
                Ok(text) => text,
                Err(error) => {
                    self.report_once(format!("{}: {error}", file.display()), &mut seen_problems);
                    self.keep_file(&file, &mut candidates, &mut present_keys, &mut by_file);
                    continue;
                }
            };
            let results = match parsed_before.remove(&file) {
                Some(parsed) if parsed.text == text => parsed.results,
                _ => signet_policy::parse_yaml_documents(&text),
            };
            self.parsed.insert(
                file.clone(),
                ParsedFile {
                    text,
                    results: results.clone(),
                },
            );
            let broken = results.iter().any(|r| {
                matches!(
                    r,
                    Err(LoadError {
                        problem: signet_policy::document::LoadProblem::Syntax(_),
                        ..
                    })
                )
            });
            let mut loaded = Vec::new();
            for result in results {
                match result {
                    Ok(object) => loaded.push(object),
                    Err(error) => {
                        self.report_once(
                            format!("{}: {error}; skipped", file.display()),
                            &mut seen_problems,
                        );
                        if let (Some(kind), Some(name)) =
                            (error.kind.as_deref().and_then(kind_of), error.name.clone())
                        {
                            failed_keys.insert((kind, name.clone()));
                            present_keys.insert((kind, name));
                        }
                    }
                }
            }
            if broken {
                // Unparseable YAML: the file's previous objects stay in force.
                self.keep_file(&file, &mut candidates, &mut present_keys, &mut by_file);
                continue;
            }
            for object in &loaded {
                if let Some(key) = key_of(object) {
                    present_keys.insert(key);
                }
            }
            by_file.insert(file.clone(), loaded.clone());
            candidates.extend(loaded);
        }

        // Objects that failed to load but were valid before: substitute.
        for key in &failed_keys {
            if let Some(previous) = self.last_good.get(key) {
                candidates.push(previous.clone());
            }
        }

        let previous = self.sender.borrow().clone();
        let mut document = PolicyDocument::from_objects(candidates);
        let mut state =
            PolicyState::compile_after(self.version + 1, &self.trust_domain, &document, &previous);
        // Objects that no longer compile: fall back to their last good version.
        let mut substituted = false;
        let mut replacements = Vec::new();
        for report in &state.reports {
            if let Err(error) = &report.result {
                let key = (report.kind, report.name.clone());
                let message = format!("{} {:?}: {error}", report.kind.as_str(), report.name);
                match self.last_good.get(&key) {
                    Some(previous) => {
                        self.report_once(
                            format!("{message}; the last valid version stays in force"),
                            &mut seen_problems,
                        );
                        replacements.push((key, previous.clone()));
                    }
                    None => self.report_once(format!("{message}; skipped"), &mut seen_problems),
                }
            }
        }
        if !replacements.is_empty() {
            for ((kind, name), last_good) in replacements {
                let named = |meta: &kube::api::ObjectMeta| meta.name.as_deref() == Some(&name);
                match kind {
                    ObjectKind::WorkloadIdentity => {
                        document.workload_identities.retain(|o| !named(&o.metadata))
                    }
                    ObjectKind::Role => document.roles.retain(|o| !named(&o.metadata)),
                }
                match last_good {
                    PolicyObject::WorkloadIdentity(o) => document.workload_identities.push(*o),
                    PolicyObject::Role(o) => document.roles.push(*o),
                }
            }
            state = PolicyState::compile_after(
                self.version + 1,
                &self.trust_domain,
                &document,
                &previous,
            );
            substituted = true;
        }

        // Remember what is valid now; forget objects deleted from every file.
        let in_force = state.snapshot.document();
        for identity in &in_force.workload_identities {
            let object = PolicyObjectRef::WorkloadIdentity(identity);
            remember_valid(&mut self.last_good, &failed_keys, object);
        }
        for role in &in_force.roles {
            remember_valid(
                &mut self.last_good,
                &failed_keys,
                PolicyObjectRef::Role(role),
            );
        }
        self.last_good.retain(|key, _| present_keys.contains(key));
        self.last_by_file = by_file;
        self.reported = seen_problems;

        let changed = state.document_json != self.sender.borrow().document_json;
        if changed {
            self.version += 1;
            tracing::info!(
                version = state.version,
                identities = state.snapshot.identity_names().count(),
                roles = state.snapshot.role_names().count(),
                kept_last_valid = substituted,
                "policy loaded"
            );
            let state = state.with_delta_from(&self.sender.borrow());
            self.sender.send_replace(Arc::new(state));
        }
        changed
    }

    fn keep_file(
        &self,
        file: &Path,
        candidates: &mut Vec<PolicyObject>,
        present_keys: &mut BTreeSet<ObjectKey>,
        by_file: &mut BTreeMap<PathBuf, Vec<PolicyObject>>,
    ) {
        if let Some(previous) = self.last_by_file.get(file) {
            for object in previous {
                if let Some(key) = key_of(object) {
                    present_keys.insert(key);
                }
            }
            candidates.extend(previous.iter().cloned());
            by_file.insert(file.to_owned(), previous.clone());
        }
    }

    /// Watches the directory and reloads on change until the returned
    /// future is dropped. The watch is registered before this returns, so
    /// no change made afterwards is missed.
    pub fn run(mut self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (events, mut changes) = mpsc::unbounded_channel::<()>();
        let watcher = self.watch_directory(events);
        async move {
            // Kept alive for as long as the loop runs; dropping it stops events.
            let _watcher = watcher;
            let mut resync = tokio::time::interval(RESYNC_INTERVAL);
            resync.tick().await;
            loop {
                tokio::select! {
                    Some(()) = changes.recv() => {
                        tokio::time::sleep(DEBOUNCE).await;
                        while changes.try_recv().is_ok() {}
                    }
                    _ = resync.tick() => {}
                }
                self.reload();
            }
        }
    }

    fn watch_directory(
        &self,
        events: mpsc::UnboundedSender<()>,
    ) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        let mut watcher = match notify::recommended_watcher(
            move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    let _ = events.send(());
                }
            },
        ) {
            Ok(watcher) => watcher,
            Err(error) => {
                tracing::warn!(%error, "cannot watch the policy directory; rescanning every 30s instead");
                return None;
            }
        };
        if let Err(error) = watcher.watch(&self.dir, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(%error, dir = %self.dir.display(), "cannot watch the policy directory; rescanning every 30s instead");
            return None;
        }
        Some(watcher)
    }
}

/// A policy object in force, borrowed from the compiled document.
#[derive(Clone, Copy)]
enum PolicyObjectRef<'a> {
    WorkloadIdentity(&'a signet_policy::crd::WorkloadIdentity),
    Role(&'a signet_policy::crd::Role),
}

/// Records `object` as the last valid version of its name, copying it only
/// when it differs from the one held (most reloads change nothing).
fn remember_valid(
    last_good: &mut BTreeMap<ObjectKey, PolicyObject>,
    failed_keys: &BTreeSet<ObjectKey>,
    object: PolicyObjectRef<'_>,
) {
    let (kind, name) = match object {
        PolicyObjectRef::WorkloadIdentity(o) => (ObjectKind::WorkloadIdentity, &o.metadata.name),
        PolicyObjectRef::Role(o) => (ObjectKind::Role, &o.metadata.name),
    };
    let Some(name) = name else { return };
    let key = (kind, name.clone());
    if failed_keys.contains(&key) {
        return;
    }
    let same = match (last_good.get(&key), object) {
        (Some(PolicyObject::WorkloadIdentity(held)), PolicyObjectRef::WorkloadIdentity(o)) => {
            **held == *o
        }
        (Some(PolicyObject::Role(held)), PolicyObjectRef::Role(o)) => **held == *o,
        _ => false,
    };
    if !same {
        let owned = match object {
            PolicyObjectRef::WorkloadIdentity(o) => {
                PolicyObject::WorkloadIdentity(Box::new(o.clone()))
            }
            PolicyObjectRef::Role(o) => PolicyObject::Role(Box::new(o.clone())),
        };
        last_good.insert(key, owned);
    }
}

fn is_policy_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let extension = path.extension().and_then(|e| e.to_str());
    !hidden && path.is_file() && matches!(extension, Some("yaml" | "yml" | "json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use signet_policy::Attributes;

    const IDENTITY: &str = r#"
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: web, labels: {app: web}}
spec:
  rules:
    allow:
      - conditions: [{attribute: workload.unix.uid, eq: "1000"}]
  spiffe: {id: "/web/{{ workload.unix.uid }}"}
---
apiVersion: signet.dev/v1alpha1
kind: Role
metadata: {name: all}
spec:
  subjects: [{kind: Agent, name: "*"}]
  allow: {workloadIdentityLabels: {"*": ["*"]}}
"#;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn workload() -> Attributes {
        let map = [
            ("workload.unix.uid".to_string(), "1000".to_string()),
            ("agent.name".to_string(), "vm-1".to_string()),
        ]
        .into_iter()
        .collect::<std::collections::BTreeMap<_, _>>();
        Attributes::try_from(map).unwrap()
    }

    fn ids(state: &PolicyState) -> Vec<String> {
        state
            .snapshot
            .evaluate(&workload())
            .into_iter()
            .map(|i| i.spiffe_id.to_string())
            .collect()
    }

    #[test]
    fn loads_changes_and_keeps_last_good_versions() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("web.yaml"), IDENTITY).unwrap();
        std::fs::write(dir.path().join("README.md"), "not policy").unwrap();
        let (mut source, policy) = DirectorySource::load(dir.path().into(), td(), 100);
        let first = policy.borrow().clone();
        assert_eq!(first.version, 101);
        assert_eq!(ids(&first), ["spiffe://example.org/web/1000"]);

        // Nothing changed: no new version.
        assert!(!source.reload());

        // A broken template: the previous version of the object stays in force.
        std::fs::write(
            dir.path().join("web.yaml"),
            IDENTITY.replace(
                "/web/{{ workload.unix.uid }}",
                "/web/{{ workload.unix.nope }}",
            ),
        )
        .unwrap();
        source.reload();
        assert_eq!(ids(&policy.borrow()), ["spiffe://example.org/web/1000"]);
        let report = policy
            .borrow()
            .reports
            .iter()
            .any(|r| r.name == "web" && r.result.is_ok());
        assert!(report, "the substituted last good version compiled");

        // A YAML syntax error: the whole file's previous objects stay.
        std::fs::write(dir.path().join("web.yaml"), "kind: [unterminated").unwrap();
        source.reload();
        assert_eq!(ids(&policy.borrow()), ["spiffe://example.org/web/1000"]);

        // A good new version replaces it.
        std::fs::write(
            dir.path().join("web.yaml"),
            IDENTITY.replace("/web/", "/v2/web/"),
        )
        .unwrap();
        assert!(source.reload());
        assert_eq!(ids(&policy.borrow()), ["spiffe://example.org/v2/web/1000"]);

        // Deleting the file removes the policy.
        std::fs::remove_file(dir.path().join("web.yaml")).unwrap();
        assert!(source.reload());
        assert!(ids(&policy.borrow()).is_empty());
    }

    #[test]
    fn a_bad_object_does_not_poison_good_ones() {
        let dir = tempfile::tempdir().unwrap();
        let bad = r#"
apiVersion: signet.dev/v1alpha1
kind: WorkloadIdentity
metadata: {name: broken}
spec:
  spiffe: {id: "no-leading-slash"}
"#;
        std::fs::write(dir.path().join("a.yaml"), IDENTITY).unwrap();
        std::fs::write(dir.path().join("b.yaml"), bad).unwrap();
        let (_source, policy) = DirectorySource::load(dir.path().into(), td(), 1);
        let state = policy.borrow().clone();
        assert_eq!(ids(&state), ["spiffe://example.org/web/1000"]);
        let broken = state.reports.iter().find(|r| r.name == "broken").unwrap();
        assert!(broken.result.is_err());
    }

    #[tokio::test]
    async fn watching_picks_up_new_files() {
        let dir = tempfile::tempdir().unwrap();
        let (source, mut policy) = DirectorySource::load(dir.path().into(), td(), 1);
        assert!(ids(&policy.borrow_and_update()).is_empty());
        let task = tokio::spawn(source.run());
        std::fs::write(dir.path().join("web.yaml"), IDENTITY).unwrap();
        tokio::time::timeout(Duration::from_secs(20), policy.changed())
            .await
            .expect("reload after the file appeared")
            .unwrap();
        assert_eq!(ids(&policy.borrow()), ["spiffe://example.org/web/1000"]);
        task.abort();
    }
}
