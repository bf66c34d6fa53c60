//! The internode wire format: length-delimited frames, each a protocol
//! version byte followed by a postcard-encoded [`Frame`].
//!
//! Invariant: decoding never panics; any byte string that is not a frame of
//! [`PROTOCOL_VERSION`] is a [`NetError::Codec`], and the connection that
//! carried it is closed by its owner. The same batching writer serves both
//! ends of a connection: it writes every queued frame, then flushes once.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::codec::{Encoder, LengthDelimitedCodec};

use super::{NetError, Request, Response};

/// The version byte in front of every frame; bumped on incompatible change.
// NOTE: 2 added `Request::Hint` and `Request::Aae`, and came with the
// replica-set layout, under which a node of version 1 would place keys
// elsewhere: refusing its frames (logged at the handshake) is safer than
// serving with two layouts. 3: records carry microsecond HLC timestamps
// (record format 2, anti-entropy key digests compare them raw), which a
// version-2 node can neither decode nor order against its own. 4 added
// `Request::ReadMany` and `Request::WriteMany`, which a version-3 node would
// answer with an error.
pub const PROTOCOL_VERSION: u8 = 4;

/// Length of a handshake nonce.
pub(crate) const NONCE_LEN: usize = 32;

/// Length of a handshake MAC (HMAC-SHA256).
pub(crate) const MAC_LEN: usize = 32;

/// Bytes queued in the writer before it writes them out even though more
/// frames are waiting (keeps one batch from growing without bound).
const MAX_WRITE_BATCH_BYTES: usize = 256 * 1024;

/// Everything that travels on a peer connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Frame {
    /// Handshake, both directions first: who I am and my challenge to you.
    Hello {
        /// The sender's node name.
        node_name: String,
        /// Fresh random challenge.
        nonce: [u8; NONCE_LEN],
    },
    /// Handshake: proof that the sender knows the cluster secret.
    Proof {
        /// HMAC-SHA256 over both nonces, the sender's name and role.
        mac: [u8; MAC_LEN],
    },
    /// Handshake: the server refuses the client's proof; it closes next.
    Refused,
    /// A request; `id` is unique among the sender's requests in flight.
    Request {
        /// Matches the response to its caller.
        id: u64,
        /// The request itself.
        request: Request,
    },
    /// The answer to the request with the same `id`.
    Response {
        /// The request's id.
        id: u64,
        /// The answer.
        response: Response,
    },
}

/// Encodes `frame` as a frame body: version byte, then postcard.
pub(crate) fn encode_frame(frame: &Frame) -> Result<Bytes, NetError> {
    // NOTE: sized first (a pass that writes nothing), so the body is not
    // regrown (and copied) from one byte up.
    let size = postcard::experimental::serialized_size(frame)
        .map_err(|e| NetError::Codec(e.to_string()))?;
    let mut buf = Vec::with_capacity(size + 1);
    buf.push(PROTOCOL_VERSION);
    let buf = postcard::to_extend(frame, buf).map_err(|e| NetError::Codec(e.to_string()))?;
    Ok(Bytes::from(buf))
}

/// Decodes a frame body. Errors (never panics) on an unknown version,
/// truncation, garbage or trailing bytes.
pub(crate) fn decode_frame(body: &[u8]) -> Result<Frame, NetError> {
    let Some((&version, rest)) = body.split_first() else {
        return Err(NetError::Codec("empty frame".into()));
    };
    if version != PROTOCOL_VERSION {
        return Err(NetError::Codec(format!(
            "unknown protocol version {version} (speaking {PROTOCOL_VERSION})"
        )));
    }
    let (frame, trailing) =
        postcard::take_from_bytes::<Frame>(rest).map_err(|e| NetError::Codec(e.to_string()))?;
    if !trailing.is_empty() {
        return Err(NetError::Codec(format!(
            "{} trailing bytes after frame",
            trailing.len()
        )));
    }
    Ok(frame)
}

/// The length-delimited codec every peer connection uses: a 4-byte
/// big-endian length, frames of at most `max_frame_bytes`.
pub(crate) fn frame_codec(max_frame_bytes: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(max_frame_bytes)
        .new_codec()
}

/// Writes one frame and flushes (handshake use; data goes through
/// [`write_loop`]).
pub(crate) async fn write_one<W: AsyncWrite + Unpin>(
    writer: &mut W,
    codec: &mut LengthDelimitedCodec,
    frame: &Frame,
) -> Result<(), NetError> {
    let body = encode_frame(frame)?;
    let mut buf = BytesMut::with_capacity(body.len() + 4);
    codec
        .encode(body, &mut buf)
        .map_err(|e| NetError::Codec(e.to_string()))?;
    writer
        .write_all(&buf)
        .await
        .map_err(|e| NetError::Unreachable(e.to_string()))?;
    writer
        .flush()
        .await
        .map_err(|e| NetError::Unreachable(e.to_string()))
}

/// The batching writer: waits for a frame body, takes every other body
/// already queued (up to [`MAX_WRITE_BATCH_BYTES`]), writes them with one
/// `write_all` and flushes once. Returns when the queue's senders are all
/// gone (`Ok`) or the socket fails.
pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut frames_rx: mpsc::Receiver<Bytes>,
    max_frame_bytes: usize,
) -> Result<(), NetError> {
    let mut codec = frame_codec(max_frame_bytes);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let batch_frames = metrics::histogram!("ringkv_peer_write_batch_frames");
    while let Some(first) = frames_rx.recv().await {
        let mut frames = 1u32;
        encode_into(&mut codec, first, &mut buf);
        while buf.len() < MAX_WRITE_BATCH_BYTES {
            let Ok(next) = frames_rx.try_recv() else {
                break;
            };
            encode_into(&mut codec, next, &mut buf);
            frames += 1;
        }
        batch_frames.record(f64::from(frames));
        let io = async {
            writer.write_all(&buf).await?;
            writer.flush().await
        };
        io.await.map_err(|e| NetError::Unreachable(e.to_string()))?;
        buf.clear();
    }
    let _ = writer.shutdown().await;
    Ok(())
}

/// Appends one length-prefixed frame. A body over the limit is dropped
/// here with a log: its sender already got or will get a timeout, and the
/// peer would refuse the frame anyway.
fn encode_into(codec: &mut LengthDelimitedCodec, body: Bytes, buf: &mut BytesMut) {
    let len = body.len();
    if let Err(e) = codec.encode(body, buf) {
        tracing::warn!(len, error = %e, "dropping oversized outgoing frame");
        metrics::counter!("ringkv_peer_oversized_frames_total").increment(1);
    }
}

/// A frame body with an arbitrary version byte (tests forge frames with it).
#[cfg(test)]
pub(crate) fn raw_frame(version: u8, payload: &[u8]) -> Bytes {
    use bytes::BufMut;
    let mut b = BytesMut::with_capacity(payload.len() + 1);
    b.put_u8(version);
    b.put_slice(payload);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Hello {
                node_name: "n1".into(),
                nonce: [7; NONCE_LEN],
            },
            Frame::Proof { mac: [9; MAC_LEN] },
            Frame::Refused,
            Frame::Request {
                id: u64::MAX,
                request: Request::Write {
                    keyspace: "default".into(),
                    key: Bytes::from_static(b"k"),
                    record: Bytes::from(vec![0u8; 1000]),
                },
            },
            Frame::Request {
                id: 0,
                request: Request::Ping,
            },
            Frame::Response {
                id: 42,
                response: Response::Record(Some(Bytes::from_static(b"rec"))),
            },
            Frame::Response {
                id: 43,
                response: Response::Error("boom".into()),
            },
        ]
    }

    #[test]
    fn frames_round_trip() {
        for frame in samples() {
            let body = encode_frame(&frame).unwrap();
            assert_eq!(body[0], PROTOCOL_VERSION);
            assert_eq!(decode_frame(&body).unwrap(), frame);
        }
    }

    #[test]
    fn unknown_version_is_a_codec_error() {
        let body = encode_frame(&Frame::Refused).unwrap();
        for other in [PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1] {
            let forged = raw_frame(other, &body[1..]);
            let wanted = format!("version {other}");
            assert!(
                matches!(decode_frame(&forged), Err(NetError::Codec(m)) if m.contains(&wanted))
            );
        }
        assert!(matches!(decode_frame(&[]), Err(NetError::Codec(_))));
    }

    #[test]
    fn truncated_and_padded_frames_are_errors() {
        for frame in samples() {
            let body = encode_frame(&frame).unwrap();
            for cut in 0..body.len() {
                assert!(
                    decode_frame(&body[..cut]).is_err(),
                    "{frame:?} cut at {cut}"
                );
            }
            let mut padded = body.to_vec();
            padded.push(0);
            assert!(decode_frame(&padded).is_err());
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame(&bytes);
            let _ = decode_frame(&raw_frame(PROTOCOL_VERSION, &bytes));
        }

        #[test]
        fn request_round_trip(id in any::<u64>(), ks in ".{0,16}", key in proptest::collection::vec(any::<u8>(), 0..64)) {
            let frame = Frame::Request { id, request: Request::Read { keyspace: ks, key: Bytes::from(key) } };
            prop_assert_eq!(decode_frame(&encode_frame(&frame).unwrap()).unwrap(), frame);
        }
    }

    #[tokio::test]
    async fn write_loop_batches_and_drops_oversized() {
        let (frames_tx, frames_rx) = mpsc::channel(16);
        let ok = encode_frame(&Frame::Refused).unwrap();
        frames_tx.send(ok.clone()).await.unwrap();
        frames_tx.send(Bytes::from(vec![0u8; 100])).await.unwrap();
        frames_tx.send(ok.clone()).await.unwrap();
        drop(frames_tx);
        let mut out = Vec::new();
        write_loop(&mut out, frames_rx, 64).await.unwrap();
        let mut expected = Vec::new();
        for _ in 0..2 {
            expected.extend_from_slice(&(ok.len() as u32).to_be_bytes());
            expected.extend_from_slice(&ok);
        }
        assert_eq!(out, expected);
    }
}
