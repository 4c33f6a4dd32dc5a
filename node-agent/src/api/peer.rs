//! Accepting Workload API connections with the caller's credentials.
//!
//! Peer credentials (`SO_PEERCRED`) are read once per connection, and the
//! caller's `/proc/<pid>` is opened right then: attestation later reads
//! through that handle, so a process that exits and whose PID is reused
//! cannot be mistaken for the one that connected.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use signet_runtime::h2_authority::FixedAuthority;
use tokio::net::{UnixListener, UnixStream};

use crate::attest::procfs::{ProcError, ProcRoot, ProcessHandle};
use crate::attest::unix::PeerCredentials;

/// What the server knows about the peer of one connection.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub credentials: Option<PeerCredentials>,
    /// The caller's process, opened at accept time.
    pub process: Result<Arc<ProcessHandle>, Arc<ProcError>>,
}

/// An accepted unix connection carrying its [`PeerInfo`] into every request.
pub type PeerStream = FixedAuthority<PeerInfo>;

/// Reads the caller's credentials and opens its process, once, at accept time.
pub fn accept_peer(stream: UnixStream, proc_root: &ProcRoot) -> PeerStream {
    let credentials = stream.peer_cred().ok().and_then(|cred| {
        Some(PeerCredentials {
            pid: u32::try_from(cred.pid()?).ok()?,
            uid: cred.uid(),
            gid: cred.gid(),
        })
    });
    let process = match credentials {
        Some(peer) => proc_root.open(peer.pid).map(Arc::new).map_err(Arc::new),
        None => Err(Arc::new(ProcError::Gone { pid: 0 })),
    };
    FixedAuthority::with_info(
        stream,
        PeerInfo {
            credentials,
            process,
        },
    )
}

/// Accepted connections for `serve_with_incoming`. Accept errors (e.g. out
/// of descriptors) are logged and retried rather than ending the server.
pub fn incoming(
    listener: UnixListener,
    proc_root: ProcRoot,
) -> impl Stream<Item = Result<PeerStream, io::Error>> {
    futures::stream::unfold((listener, proc_root), |(listener, proc_root)| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let accepted = accept_peer(stream, &proc_root);
                    return Some((Ok(accepted), (listener, proc_root)));
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting a Workload API connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}
