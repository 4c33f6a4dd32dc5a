//! WatchNodePods: each agent's stream of the pods bound to its node, so it
//! can have their SVIDs signed before their containers start. A snapshot
//! first, then the changes, batched as they queue up; an update never
//! carries pods of other nodes, so its size does not grow with the
//! cluster.

use std::collections::HashMap;
use std::sync::Arc;

use signet_proto::issuer::v1 as pb;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{mpsc, watch};
use tonic::Status;

use crate::agents::AgentRecord;
use crate::cluster::pods::{PodCache, PodChange};
use crate::issuer::policy_stream::revoked;
use crate::revocation::RevocationList;

/// Pods and removals at most in one update; more wait for the next.
const MAX_PER_UPDATE: usize = 256;

/// What one agent's stream follows.
pub struct NodePodsFeed {
    pub pods: Arc<PodCache>,
    pub node: Box<str>,
    pub revocations: watch::Receiver<Arc<RevocationList>>,
}

/// The update being gathered from queued changes: the last word on each
/// pod wins.
#[derive(Default)]
struct Gathered {
    bound: HashMap<Box<str>, Arc<crate::cluster::pods::PodFacts>>,
    gone: Vec<Box<str>>,
}

impl Gathered {
    fn len(&self) -> usize {
        self.bound.len() + self.gone.len()
    }

    fn take(&mut self) -> pb::NodePodsUpdate {
        let gathered = std::mem::take(self);
        pb::NodePodsUpdate {
            snapshot: false,
            pods: gathered
                .bound
                .values()
                .map(|pod| pod.to_bound_pod())
                .collect(),
            removed_pod_uids: gathered.gone.into_iter().map(String::from).collect(),
        }
    }
}

/// What the stream does next after a change.
enum Next {
    Continue,
    Snapshot,
    Stop,
}

impl NodePodsFeed {
    fn snapshot(&self) -> pb::NodePodsUpdate {
        pb::NodePodsUpdate {
            snapshot: true,
            pods: self
                .pods
                .on_node(&self.node)
                .iter()
                .map(|pod| pod.to_bound_pod())
                .collect(),
            removed_pod_uids: Vec::new(),
        }
    }

    fn gather(&self, change: PodChange, into: &mut Gathered) -> Next {
        match change {
            PodChange::Bound(pod) if pod.node_name == self.node => {
                into.gone.retain(|uid| *uid != pod.uid);
                into.bound.insert(pod.uid.clone(), pod);
            }
            PodChange::Gone { node, uid } if node == self.node => {
                into.bound.remove(&uid);
                into.gone.push(uid);
            }
            PodChange::Resynced => return Next::Snapshot,
            PodChange::Bound(_) | PodChange::Gone { .. } => {}
        }
        Next::Continue
    }

    /// Sends `agent` its node's pods, then every change to them, until the
    /// agent hangs up or is revoked.
    pub async fn run(
        mut self,
        agent: AgentRecord,
        sender: mpsc::Sender<Result<pb::NodePodsUpdate, Status>>,
    ) {
        // Followed before the snapshot is taken, so no change falls between.
        let mut changes = self.pods.follow_node(&self.node);
        let mut send_snapshot = true;
        tracing::debug!(agent = %agent.name, node = %self.node, "node pod watch opened");
        loop {
            if send_snapshot {
                send_snapshot = false;
                if sender.send(Ok(self.snapshot())).await.is_err() {
                    break;
                }
            }
            let first = tokio::select! {
                change = changes.recv() => change,
                () = sender.closed() => break,
                refusal = revoked(&mut self.revocations, &agent.name) => {
                    tracing::warn!(agent = %agent.name, "closing the node pod stream of a revoked agent");
                    let _ = sender.send(Err(Status::permission_denied(refusal.message))).await;
                    break;
                }
            };
            let mut gathered = Gathered::default();
            let mut next = match first {
                Ok(change) => self.gather(change, &mut gathered),
                Err(RecvError::Lagged(_)) => Next::Snapshot,
                Err(RecvError::Closed) => Next::Stop,
            };
            // Whatever queued meanwhile goes in the same update.
            while matches!(next, Next::Continue) && gathered.len() < MAX_PER_UPDATE {
                next = match changes.try_recv() {
                    Ok(change) => self.gather(change, &mut gathered),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(_)) => Next::Snapshot,
                    Err(TryRecvError::Closed) => Next::Stop,
                };
            }
            match next {
                Next::Stop => break,
                Next::Snapshot => send_snapshot = true,
                Next::Continue => {
                    if gathered.len() > 0 && sender.send(Ok(gathered.take())).await.is_err() {
                        break;
                    }
                }
            }
        }
        tracing::debug!(agent = %agent.name, "node pod watch closed");
    }
}
