//! Accepting every gRPC client on a unix socket.
//!
//! gRPC clients name a unix-socket channel by its path and many send that
//! as the HTTP/2 `:authority`: grpc's C core (grpcio, hence py-spiffe)
//! percent-encoded (`%2Frun%2Fsignet%2Fagent.sock`), grpc-go dialers such as
//! the kubelet's plugin and CSI clients as the bare path. The HTTP/2 server
//! under tonic parses `:authority` as a URI authority and resets every such
//! stream, so those clients could not call a tonic server at all. The
//! authority means nothing on a unix socket (Go servers ignore it), so this
//! layer sits between the socket and the HTTP/2 server and replaces an
//! `:authority` that is not a valid URI authority with `localhost`.
//!
//! It reads the client's frames, passes everything but header blocks
//! through unchanged, decodes each header block with the client's HPACK
//! state and re-encodes it statelessly (literals without indexing), so the
//! server's HPACK decoder never sees the client's dynamic table. Input it
//! cannot parse is passed through as it is, for the server to reject.
//!
//! A connection whose first header block needs no change (most clients:
//! grpc-go and tonic say `localhost`) is passed through unchanged from
//! then on, so its calls cost no HPACK decoding here: a channel keeps one
//! authority for all its calls, and the server's HPACK state is the
//! client's as long as nothing was re-encoded.

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, BytesMut};
use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, UdsConnectInfo};

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, the client connection preface.
const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The smallest SETTINGS_MAX_FRAME_SIZE a server may advertise; frames we
/// write never exceed it.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// The server's default SETTINGS_HEADER_TABLE_SIZE: the most the client's
/// encoder may use.
const HEADER_TABLE_SIZE: usize = 4_096;
/// A header block larger than this is not buffered: the connection falls
/// back to passing bytes through (the server limits header lists far lower).
const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Replaces an `:authority` the server would refuse.
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

/// A header block being collected across CONTINUATION frames.
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as received, for the pass-through fallback.
    raw: Vec<u8>,
}

/// Rewrites the client-to-server byte stream of one HTTP/2 connection.
pub struct AuthorityRewriter {
    preface_seen: usize,
    input: BytesMut,
    output: BytesMut,
    decoder: Decoder<'static>,
    block: Option<PendingBlock>,
    /// Set after input this layer cannot follow, or once the connection's
    /// first header block needed no change: bytes pass unchanged.
    passthrough: bool,
    /// Whether a header block was re-encoded: the server's HPACK state is
    /// no longer the client's, so every later block must be re-encoded too.
    rewritten: bool,
}

impl Default for AuthorityRewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl AuthorityRewriter {
    pub fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Self {
            preface_seen: 0,
            input: BytesMut::new(),
            output: BytesMut::new(),
            decoder,
            block: None,
            passthrough: false,
            rewritten: false,
        }
    }

    /// Takes bytes read from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.passthrough {
            self.output.extend_from_slice(bytes);
            return;
        }
        self.input.extend_from_slice(bytes);
        self.process();
    }

    /// Bytes ready for the server.
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.output
    }

    fn process(&mut self) {
        if self.preface_seen < PREFACE_LEN {
            let take = (PREFACE_LEN - self.preface_seen).min(self.input.len());
            let preface = self.input.split_to(take);
            self.output.extend_from_slice(&preface);
            self.preface_seen += take;
        }
        while self.preface_seen == PREFACE_LEN && !self.passthrough {
            if self.input.len() < FRAME_HEADER_LEN {
                return;
            }
            let length = (usize::from(self.input[0]) << 16)
                | (usize::from(self.input[1]) << 8)
                | usize::from(self.input[2]);
            if length > MAX_HEADER_BLOCK {
                self.fall_back();
                return;
            }
            if self.input.len() < FRAME_HEADER_LEN + length {
                return;
            }
            let frame = self.input.split_to(FRAME_HEADER_LEN + length);
            self.frame(&frame);
        }
    }

    /// Hands everything held back to the server unchanged, from now on.
    fn fall_back(&mut self) {
        if let Some(block) = self.block.take() {
            self.output.extend_from_slice(&block.raw);
        }
        let rest = self.input.split();
        self.output.extend_from_slice(&rest);
        self.passthrough = true;
    }

    fn frame(&mut self, frame: &[u8]) {
        let kind = frame[3];
        let flags = frame[4];
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER_LEN..];

        if let Some(block) = self.block.as_mut() {
            // Only CONTINUATION of the same stream may follow (RFC 9113 §6.10).
            if kind != FRAME_CONTINUATION || block.stream_id != stream_id {
                let raw = std::mem::take(&mut block.raw);
                self.block = None;
                self.output.extend_from_slice(&raw);
                self.output.extend_from_slice(frame);
                self.fall_back();
                return;
            }
            block.raw.extend_from_slice(frame);
            block.fragment.extend_from_slice(payload);
            if block.fragment.len() > MAX_HEADER_BLOCK {
                self.fall_back();
            } else if flags & FLAG_END_HEADERS != 0 {
                self.finish_block();
            }
            return;
        }

        if kind != FRAME_HEADERS {
            self.output.extend_from_slice(frame);
            return;
        }
        let Some((priority, fragment)) = split_headers_payload(flags, payload) else {
            self.output.extend_from_slice(frame);
            self.fall_back();
            return;
        };
        self.block = Some(PendingBlock {
            stream_id,
            end_stream: flags & FLAG_END_STREAM != 0,
            priority,
            fragment: fragment.to_vec(),
            raw: frame.to_vec(),
        });
        if flags & FLAG_END_HEADERS != 0 {
            self.finish_block();
        }
    }

    fn finish_block(&mut self) {
        let Some(block) = self.block.take() else {
            return;
        };
        let mut encoded = Vec::with_capacity(block.fragment.len() + 16);
        let mut replaced = false;
        let decoded = self.decoder.decode_with_cb(
            &block.fragment,
            |name: Cow<'_, [u8]>, value: Cow<'_, [u8]>| {
                let value: &[u8] = if name.as_ref() == b":authority" && !is_valid_authority(&value)
                {
                    replaced = true;
                    REPLACEMENT_AUTHORITY
                } else {
                    &value
                };
                encode_literal(&mut encoded, &name, value);
            },
        );
        if decoded.is_err() {
            // The server's decoder will refuse it the same way.
            self.output.extend_from_slice(&block.raw);
            self.fall_back();
            return;
        }
        if !replaced && !self.rewritten {
            // Nothing to change, and the server's HPACK state is still the
            // client's: the rest of the connection needs no help.
            self.output.extend_from_slice(&block.raw);
            self.fall_back();
            return;
        }
        self.rewritten = true;
        self.write_header_frames(&block, &encoded);
    }

    fn write_header_frames(&mut self, block: &PendingBlock, encoded: &[u8]) {
        let mut first_flags = 0;
        if block.end_stream {
            first_flags |= FLAG_END_STREAM;
        }
        let mut prefix: &[u8] = &[];
        if let Some(priority) = &block.priority {
            first_flags |= FLAG_PRIORITY;
            prefix = priority;
        }
        let first_room = MAX_FRAME_PAYLOAD - prefix.len();
        let (first, mut rest) = encoded.split_at(encoded.len().min(first_room));
        let flags = if rest.is_empty() {
            first_flags | FLAG_END_HEADERS
        } else {
            first_flags
        };
        self.write_frame(FRAME_HEADERS, flags, block.stream_id, &[prefix, first]);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME_PAYLOAD));
            let flags = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
            self.write_frame(FRAME_CONTINUATION, flags, block.stream_id, &[chunk]);
            rest = tail;
        }
    }

    fn write_frame(&mut self, kind: u8, flags: u8, stream_id: u32, parts: &[&[u8]]) {
        let length: usize = parts.iter().map(|p| p.len()).sum();
        // Lengths are bounded by MAX_FRAME_PAYLOAD, so they fit in 24 bits.
        self.output.put_uint(length as u64, 3);
        self.output.put_u8(kind);
        self.output.put_u8(flags);
        self.output.put_u32(stream_id);
        for part in parts {
            self.output.extend_from_slice(part);
        }
    }
}

/// Splits a HEADERS payload into its priority fields and header block
/// fragment, dropping padding. `None` when the lengths do not add up.
fn split_headers_payload(flags: u8, payload: &[u8]) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut body = payload;
    let mut padding = 0;
    if flags & FLAG_PADDED != 0 {
        padding = usize::from(*body.first()?);
        body = &body[1..];
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        let fields: [u8; 5] = body.get(..5)?.try_into().ok()?;
        priority = Some(fields);
        body = &body[5..];
    }
    let end = body.len().checked_sub(padding)?;
    Some((priority, &body[..end]))
}

fn is_valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// A literal header field without indexing, new name, no Huffman coding
/// (RFC 7541 §6.2.2): the server's dynamic table is never touched.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    for string in [name, value] {
        encode_length(out, string.len());
        out.extend_from_slice(string);
    }
}

/// An HPACK integer with a 7-bit prefix and the Huffman bit clear (§5.1).
fn encode_length(out: &mut Vec<u8>, mut length: usize) {
    const PREFIX_MAX: usize = 0x7f;
    if length < PREFIX_MAX {
        out.push(length as u8);
        return;
    }
    out.push(PREFIX_MAX as u8);
    length -= PREFIX_MAX;
    while length >= 0x80 {
        out.push((length % 0x80) as u8 | 0x80);
        length /= 0x80;
    }
    out.push(length as u8);
}

/// Drains `rewriter`'s output into `buf`, returning how many bytes moved.
fn drain_into(rewriter: &mut AuthorityRewriter, buf: &mut ReadBuf<'_>) -> usize {
    let output = rewriter.output();
    let n = output.len().min(buf.remaining());
    buf.put_slice(&output[..n]);
    output.advance(n);
    n
}

/// Reads from `inner` through `rewriter` (the body of an `AsyncRead` for a
/// stream wrapper).
fn poll_read_rewritten<S: AsyncRead + Unpin>(
    inner: &mut S,
    rewriter: &mut AuthorityRewriter,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    loop {
        if drain_into(rewriter, buf) > 0 {
            return Poll::Ready(Ok(()));
        }
        let mut chunk = [0u8; 8192];
        let mut read = ReadBuf::new(&mut chunk);
        match Pin::new(&mut *inner).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => return Poll::Ready(Ok(())),
            Poll::Ready(Ok(())) => rewriter.feed(read.filled()),
            other => return other,
        }
    }
}

/// A unix connection whose inbound HTTP/2 goes through [`AuthorityRewriter`],
/// carrying `info` into every request (tonic's `Connected`).
pub struct FixedAuthority<I = UdsConnectInfo> {
    stream: UnixStream,
    rewriter: AuthorityRewriter,
    info: I,
}

impl<I> FixedAuthority<I> {
    pub fn with_info(stream: UnixStream, info: I) -> Self {
        Self {
            stream,
            rewriter: AuthorityRewriter::new(),
            info,
        }
    }

    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}

impl FixedAuthority {
    /// With tonic's own connect info for unix sockets.
    pub fn new(stream: UnixStream) -> Self {
        let info = stream.connect_info();
        Self::with_info(stream, info)
    }
}

/// Accepted connections of `listener`, for tonic's `serve_with_incoming`.
pub fn unix_incoming(
    listener: UnixListener,
) -> impl Stream<Item = io::Result<FixedAuthority>> + Send + 'static {
    UnixListenerStream::new(listener).map(|accepted| accepted.map(FixedAuthority::new))
}

impl<I: Clone + Send + Sync + 'static> Connected for FixedAuthority<I> {
    type ConnectInfo = I;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl<I: Unpin> AsyncRead for FixedAuthority<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        poll_read_rewritten(&mut this.stream, &mut this.rewriter, cx, buf)
    }
}

impl<I: Unpin> AsyncWrite for FixedAuthority<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;

    /// Parses frames (kind, flags, stream, decoded headers) and decodes
    /// header blocks the way the server would.
    fn server_view(bytes: &[u8]) -> Vec<(u8, u8, u32, Headers)> {
        assert!(bytes.starts_with(PREFACE));
        let mut rest = &bytes[PREFACE.len()..];
        let mut decoder = Decoder::new();
        let mut frames = Vec::new();
        let mut block = Vec::new();
        while !rest.is_empty() {
            let length =
                usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            let payload = &rest[9..9 + length];
            let mut headers = Vec::new();
            if kind == FRAME_HEADERS || kind == FRAME_CONTINUATION {
                let (_, fragment) = split_headers_payload(flags, payload).unwrap();
                let fragment = if kind == FRAME_HEADERS {
                    fragment
                } else {
                    payload
                };
                block.extend_from_slice(fragment);
                if flags & FLAG_END_HEADERS != 0 {
                    headers = decoder.decode(&block).unwrap();
                    block.clear();
                }
            }
            frames.push((kind, flags, stream, headers));
            rest = &rest[9 + length..];
        }
        frames
    }

    fn client_block(encoder: &mut loona_hpack::Encoder<'_>, authority: &[u8]) -> Vec<u8> {
        encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
            (b":authority", authority),
            (b"workload.spiffe.io", b"true"),
        ])
    }

    fn value<'a>(headers: &'a [(Vec<u8>, Vec<u8>)], name: &[u8]) -> &'a [u8] {
        &headers.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn a_percent_encoded_authority_becomes_localhost_across_indexed_reuse() {
        let mut encoder = loona_hpack::Encoder::new();
        let bad = b"%2Frun%2Fsignet%2Fagent.sock";
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, 0, b"")); // SETTINGS
        wire.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            1,
            &client_block(&mut encoder, bad),
        ));
        wire.extend(frame(0x0, FLAG_END_STREAM, 1, b"\0\0\0\0\0"));
        // The second request refers to the first through the client's dynamic table.
        wire.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            3,
            &client_block(&mut encoder, bad),
        ));

        // Fed one byte at a time: frame boundaries never line up with reads.
        let mut rewriter = AuthorityRewriter::new();
        for byte in &wire {
            rewriter.feed(std::slice::from_ref(byte));
        }
        let frames = server_view(rewriter.output());
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0].0, 0x4);
        for index in [1, 3] {
            let headers = &frames[index].3;
            assert_eq!(value(headers, b":authority"), b"localhost");
            assert_eq!(
                value(headers, b":path"),
                b"/SpiffeWorkloadAPI/FetchX509SVID"
            );
            assert_eq!(value(headers, b"workload.spiffe.io"), b"true");
        }
        assert_eq!(frames[2], (0x0, FLAG_END_STREAM, 1, vec![]));
    }

    #[test]
    fn flags_padding_and_continuations_are_kept_through_a_rewrite() {
        let mut encoder = loona_hpack::Encoder::new();
        let block = client_block(&mut encoder, b"/run/signet/agent.sock");
        let (head, tail) = block.split_at(10);
        // PADDED + PRIORITY + END_STREAM on HEADERS, the rest in CONTINUATION.
        let mut payload = vec![3];
        payload.extend_from_slice(&[0, 0, 0, 0, 15]);
        payload.extend_from_slice(head);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(
            FRAME_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            5,
            &payload,
        ));
        wire.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 5, tail));

        let mut rewriter = AuthorityRewriter::new();
        rewriter.feed(&wire);
        let frames = server_view(rewriter.output());
        assert_eq!(frames.len(), 1);
        let (kind, flags, stream, headers) = &frames[0];
        assert_eq!((*kind, *stream), (FRAME_HEADERS, 5));
        assert_eq!(*flags, FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS);
        assert_eq!(value(headers, b":authority"), b"localhost");
    }

    #[test]
    fn large_blocks_are_split_into_frames_the_server_accepts() {
        let mut encoder = loona_hpack::Encoder::new();
        let big = vec![b'x'; 40_000];
        let block = encoder.encode([
            (&b":path"[..], &b"/a"[..]),
            (b":authority", b"%2Fa.sock"),
            (b"x-big", &big[..]),
        ]);
        let mut wire = PREFACE.to_vec();
        let (first, rest) = block.split_at(MAX_FRAME_PAYLOAD);
        let (second, third) = rest.split_at(MAX_FRAME_PAYLOAD);
        wire.extend(frame(FRAME_HEADERS, 0, 1, first));
        wire.extend(frame(FRAME_CONTINUATION, 0, 1, second));
        wire.extend(frame(FRAME_CONTINUATION, FLAG_END_HEADERS, 1, third));
        let mut rewriter = AuthorityRewriter::new();
        rewriter.feed(&wire);
        let frames = server_view(rewriter.output());
        assert!(frames.len() >= 3);
        assert_eq!(value(&frames.last().unwrap().3, b"x-big"), &big[..]);
    }

    /// A valid first block: the connection is the client's bytes from then
    /// on, and a block after it with a bad authority is the server's to
    /// refuse (a channel keeps one authority).
    #[test]
    fn a_connection_that_needs_no_change_passes_through_unchanged() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, 0, b""));
        for stream in [1, 3, 5] {
            wire.extend(frame(
                FRAME_HEADERS,
                FLAG_END_HEADERS,
                stream,
                &client_block(&mut encoder, b"localhost"),
            ));
            wire.extend(frame(0x0, FLAG_END_STREAM, stream, b"\0\0\0\0\0"));
        }
        wire.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS,
            7,
            &client_block(&mut encoder, b"%2Fagent.sock"),
        ));
        let mut rewriter = AuthorityRewriter::new();
        for chunk in wire.chunks(7) {
            rewriter.feed(chunk);
        }
        assert_eq!(&rewriter.output()[..], &wire[..]);
        let frames = server_view(rewriter.output());
        assert_eq!(value(&frames[5].3, b":authority"), b"localhost");
    }

    #[test]
    fn garbage_passes_through_unchanged() {
        let mut wire = PREFACE.to_vec();
        // A header block that is not valid HPACK (index 0 is never valid).
        wire.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &[0x80]));
        wire.extend(frame(0x0, 0, 1, b"after"));
        let mut rewriter = AuthorityRewriter::new();
        rewriter.feed(&wire);
        assert_eq!(&rewriter.output()[..], &wire[..]);

        // An interleaved frame inside a header block, likewise.
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(FRAME_HEADERS, 0, 1, &[0x82]));
        wire.extend(frame(0x0, 0, 3, b"data"));
        let mut rewriter = AuthorityRewriter::new();
        rewriter.feed(&wire);
        assert_eq!(&rewriter.output()[..], &wire[..]);
    }

    #[test]
    fn random_input_never_panics() {
        use proptest::prelude::*;
        proptest!(|(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..32))| {
            let mut rewriter = AuthorityRewriter::new();
            rewriter.feed(PREFACE);
            for chunk in &chunks {
                rewriter.feed(chunk);
            }
        });
    }
}
