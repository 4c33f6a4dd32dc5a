//! Which authority signed the SVIDs in use: for each holder (an agent's
//! own SVID, a workload identity of a workload of an agent, a person's
//! credential) the authority of the latest SVID issued to it and when that
//! SVID expires. A re-issue replaces the holder's entry, so the count of a
//! tainted authority falls as agents re-issue, and an authority can be
//! revoked once nothing live depends on it.
//!
//! Kept by each replica for what it signed (in a cluster, agents stay with
//! the replica their streams are on); not persisted: after a restart the
//! counts start from what is signed since, and every SVID is renewed
//! within its half-life.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use signet_identity::AuthorityKind;

/// Holders remembered. Beyond this (after forgetting expired entries) new
/// holders are not recorded and the ledger says its counts are incomplete,
/// so memory stays bounded under a flood and a revocation is not allowed
/// on a count that may be short.
pub const MAX_HOLDERS: usize = 1_000_000;

/// An authority: its kind and id (X.509 subject key id, or JWT `kid`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AuthorityRef {
    pub kind: AuthorityKind,
    pub id: String,
}

/// Who holds an SVID.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Holder {
    /// An agent's own SVID.
    Agent { agent: String },
    /// An agent's workload's X.509-SVID of one WorkloadIdentity.
    WorkloadX509 {
        agent: String,
        workload: String,
        identity: String,
    },
    /// An agent's workload's JWT-SVID of one WorkloadIdentity and audience set.
    WorkloadJwt {
        agent: String,
        workload: String,
        identity: String,
        audiences: Vec<String>,
    },
    /// A person's or pipeline's credential, by serial or `jti` (never re-issued).
    User { credential: String },
}

/// How many live SVIDs an authority signed, and when the last expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveSvids {
    pub count: u64,
    pub until: SystemTime,
}

#[derive(Default)]
struct Entries {
    by_holder: HashMap<Holder, (AuthorityRef, SystemTime)>,
    /// Some holder was not recorded for lack of room.
    incomplete: bool,
}

/// The ledger. Every method is a short critical section.
#[derive(Default)]
pub struct SvidLedger {
    entries: Mutex<Entries>,
}

impl SvidLedger {
    /// `holder` was just issued an SVID by `authority`, valid until `not_after`.
    pub fn signed(
        &self,
        holder: Holder,
        authority: AuthorityRef,
        not_after: SystemTime,
        now: SystemTime,
    ) {
        let mut entries = self.lock();
        if entries.by_holder.len() >= MAX_HOLDERS && !entries.by_holder.contains_key(&holder) {
            entries.by_holder.retain(|_, (_, expiry)| *expiry > now);
            if entries.by_holder.len() >= MAX_HOLDERS {
                if !entries.incomplete {
                    tracing::warn!(
                        max = MAX_HOLDERS,
                        "the SVID ledger is full; live SVID counts are incomplete from now on"
                    );
                }
                entries.incomplete = true;
                return;
            }
        }
        entries.by_holder.insert(holder, (authority, not_after));
    }

    /// Whether some SVID was not recorded (the counts may be short).
    pub fn incomplete(&self) -> bool {
        self.lock().incomplete
    }

    /// Live SVIDs (not expired at `now`) per authority; expired entries
    /// are forgotten.
    pub fn live(&self, now: SystemTime) -> BTreeMap<AuthorityRef, u64> {
        let mut entries = self.lock();
        entries.by_holder.retain(|_, (_, expiry)| *expiry > now);
        let mut counts = BTreeMap::new();
        for (authority, _) in entries.by_holder.values() {
            *counts.entry(authority.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Live SVIDs per authority at `now` and when the last of them
    /// expires; expired entries are forgotten.
    pub fn live_until(&self, now: SystemTime) -> BTreeMap<AuthorityRef, LiveSvids> {
        let mut entries = self.lock();
        entries.by_holder.retain(|_, (_, expiry)| *expiry > now);
        let mut counts: BTreeMap<AuthorityRef, LiveSvids> = BTreeMap::new();
        for (authority, expiry) in entries.by_holder.values() {
            let live = counts.entry(authority.clone()).or_insert(LiveSvids {
                count: 0,
                until: *expiry,
            });
            live.count += 1;
            live.until = live.until.max(*expiry);
        }
        counts
    }

    /// Live SVIDs of one authority at `now`.
    pub fn live_for(&self, authority: &AuthorityRef, now: SystemTime) -> u64 {
        self.lock()
            .by_holder
            .values()
            .filter(|(signed_by, expiry)| signed_by == authority && *expiry > now)
            .count() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn x509(id: &str) -> AuthorityRef {
        AuthorityRef {
            kind: AuthorityKind::X509,
            id: id.to_owned(),
        }
    }

    fn workload(agent: &str, pod: &str) -> Holder {
        Holder::WorkloadX509 {
            agent: agent.to_owned(),
            workload: pod.to_owned(),
            identity: "web".to_owned(),
        }
    }

    #[test]
    fn a_reissue_moves_the_holder_to_the_new_authority_and_expiry_ends_it() {
        let ledger = SvidLedger::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        ledger.signed(workload("n1", "pod-a"), x509("old"), now + hour, now);
        ledger.signed(workload("n1", "pod-b"), x509("old"), now + hour, now);
        ledger.signed(
            Holder::Agent { agent: "n1".into() },
            x509("old"),
            now + hour,
            now,
        );
        assert_eq!(ledger.live_for(&x509("old"), now), 3);
        // Re-issued under the new CA: the old one loses the holder.
        ledger.signed(workload("n1", "pod-a"), x509("new"), now + hour, now);
        let live = ledger.live(now);
        assert_eq!(live.get(&x509("old")), Some(&2));
        assert_eq!(live.get(&x509("new")), Some(&1));
        // Another agent's pod of the same name is another holder.
        ledger.signed(workload("n2", "pod-a"), x509("old"), now + hour, now);
        assert_eq!(ledger.live_for(&x509("old"), now), 3);
        // Past their expiry nothing depends on them.
        let until = ledger.live_until(now);
        assert_eq!(until[&x509("old")].count, 3);
        ledger.signed(workload("n3", "pod-c"), x509("new"), now + hour * 2, now);
        let until = ledger.live_until(now);
        assert_eq!(until[&x509("new")].count, 2);
        assert_eq!(until[&x509("new")].until, now + hour * 2);
        let later = now + hour;
        assert_eq!(ledger.live_for(&x509("old"), later), 0);
        assert_eq!(ledger.live(later).len(), 1, "only the later SVID is left");
    }
}
