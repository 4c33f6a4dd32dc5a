//! The one loop every server stream runs: follow a workload's view in the
//! cache and push the full state whenever what the stream renders from it
//! changes. The Workload API's X.509-SVID and bundle streams and the
//! delegated API's pod stream differ only in how they render a view and
//! what ends them.

use std::collections::BTreeSet;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::cache::{Subscription, WorkloadView};

/// Messages buffered per stream; a slow reader only delays its own stream.
const STREAM_BUFFER: usize = 4;

/// What a stream does with a new view.
pub enum Step<M> {
    /// Send this (when it differs from the last message sent).
    Send(M),
    /// Nothing to send yet (e.g. between an old SVID going and its
    /// replacement arriving).
    Wait,
    /// End the stream with this status.
    End(Status),
}

/// Starts a stream whose first message is `first` and that then follows
/// `subscription` through `render`, until the client leaves, `render` ends
/// it, the cache stops or `stopped` resolves (both end it with Unavailable,
/// so clients reconnect). Whatever `render` owns lives as long as the
/// stream.
pub fn follow<M, R>(
    mut subscription: Subscription,
    first: M,
    mut render: R,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> ReceiverStream<Result<M, Status>>
where
    M: Clone + PartialEq + Send + 'static,
    R: FnMut(&WorkloadView) -> Step<M> + Send + 'static,
{
    let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(async move {
        if sender.send(Ok(first.clone())).await.is_err() {
            return;
        }
        let mut last = first;
        subscription.view().mark_unchanged();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                changed = subscription.view().changed() => if changed.is_err() {
                    let _ = sender.send(Err(shutting_down())).await;
                    return;
                },
                () = &mut stopped => {
                    let _ = sender.send(Err(shutting_down())).await;
                    return;
                }
                () = sender.closed() => return,
            }
            let view = subscription.view().borrow_and_update().clone();
            match render(&view) {
                Step::Send(message) if message == last => {}
                Step::Send(message) => {
                    if sender.send(Ok(message.clone())).await.is_err() {
                        return;
                    }
                    last = message;
                }
                Step::Wait => {}
                Step::End(status) => {
                    let _ = sender.send(Err(status)).await;
                    return;
                }
            }
        }
    });
    ReceiverStream::new(receiver)
}

/// The status a stream ends with when the agent stops.
pub fn shutting_down() -> Status {
    Status::unavailable("the agent is shutting down")
}

/// Hints for a list of SVIDs: the first holder of a hint keeps it, later
/// duplicates are blanked (and logged), so a misconfigured policy never
/// costs a workload an identity.
pub fn unique_hints<'a>(
    hints: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> Vec<String> {
    let mut seen = BTreeSet::new();
    hints
        .into_iter()
        .map(|(id, hint)| match hint.filter(|h| !h.is_empty()) {
            Some(hint) if seen.insert(hint) => hint.to_owned(),
            Some(hint) => {
                tracing::warn!(
                    spiffe_id = id,
                    hint,
                    "duplicate hint dropped from a later SVID"
                );
                String::new()
            }
            None => String::new(),
        })
        .collect()
}
