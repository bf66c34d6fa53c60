//! The challenge-response handshake that opens every peer connection.
//!
//! Both sides send a fresh nonce; each then proves it knows the cluster
//! secret with HMAC-SHA256(secret, role, client nonce, server nonce, its own
//! node name). The roles differ, so a proof cannot be reflected back, and the
//! nonces are fresh, so one cannot be replayed. Invariant: no data frame is
//! read or written on a connection before its handshake succeeded; the
//! server verifies the client's proof before revealing its own, and MACs are
//! compared in constant time.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use super::NetError;
use super::frame::{Frame, MAC_LEN, NONCE_LEN, decode_frame, frame_codec, write_one};

/// Largest frame accepted before the peer has authenticated: a handshake
/// frame is a name and 32 bytes, so an unauthenticated peer cannot make us
/// buffer a data-sized frame.
pub(crate) const MAX_HANDSHAKE_FRAME_BYTES: usize = 1024;

/// Domain separation: the protocol and version the MAC is for.
const MAC_CONTEXT: &[u8] = b"ringkv-peer-auth-v1";

/// Which end of the connection a proof comes from.
#[derive(Debug, Clone, Copy)]
enum Role {
    Client = 1,
    Server = 2,
}

/// What both sides agree on once they have exchanged hellos.
struct Transcript<'a> {
    secret: &'a str,
    client_nonce: [u8; NONCE_LEN],
    server_nonce: [u8; NONCE_LEN],
}

impl Transcript<'_> {
    fn mac(&self, role: Role, node_name: &str) -> Hmac<Sha256> {
        // NOTE: HMAC accepts keys of any length, so `new_from_slice` cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.secret.as_bytes())
            .unwrap_or_else(|_| unreachable!("hmac takes any key length"));
        mac.update(MAC_CONTEXT);
        mac.update(&[role as u8]);
        mac.update(&self.client_nonce);
        mac.update(&self.server_nonce);
        // The name is last and length-prefixed, so the input is unambiguous.
        mac.update(&(node_name.len() as u64).to_be_bytes());
        mac.update(node_name.as_bytes());
        mac
    }

    fn prove(&self, role: Role, node_name: &str) -> [u8; MAC_LEN] {
        self.mac(role, node_name).finalize().into_bytes().into()
    }

    /// Constant-time check of a peer's proof.
    fn verify(&self, role: Role, node_name: &str, proof: &[u8]) -> bool {
        self.mac(role, node_name).verify_slice(proof).is_ok()
    }
}

/// A fresh, unpredictable nonce without an RNG crate: SHA-256 over a
/// counter, the time, the process id and two `RandomState` hashes (SipHash
/// keyed from the OS's randomness, re-keyed per `RandomState`).
pub(crate) fn new_nonce() -> [u8; NONCE_LEN] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut digest = Sha256::new();
    for _ in 0..2 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(count);
        h.write_u128(nanos);
        digest.update(h.finish().to_le_bytes());
    }
    digest.update(count.to_le_bytes());
    digest.update(nanos.to_le_bytes());
    digest.update(std::process::id().to_le_bytes());
    digest.finalize().into()
}

/// The reading half of a connection, framed.
pub(crate) type FrameReader<R> = FramedRead<R, LengthDelimitedCodec>;

/// Wraps a read half for the handshake (small frame limit);
/// [`authenticated`] raises the limit afterwards.
pub(crate) fn handshake_reader<R: AsyncRead>(read_half: R) -> FrameReader<R> {
    FramedRead::new(read_half, frame_codec(MAX_HANDSHAKE_FRAME_BYTES))
}

/// Raises the frame limit to the data limit once the peer is trusted.
pub(crate) fn authenticated<R>(reader: &mut FrameReader<R>, max_frame_bytes: usize) {
    reader.decoder_mut().set_max_frame_length(max_frame_bytes);
}

/// Reads and decodes the next frame. End of stream is `Unreachable`.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut FrameReader<R>,
) -> Result<Frame, NetError> {
    match reader.next().await {
        None => Err(NetError::Unreachable("connection closed by peer".into())),
        Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            Err(NetError::Codec(e.to_string()))
        }
        Some(Err(e)) => Err(NetError::Unreachable(e.to_string())),
        Some(Ok(body)) => decode_frame(&body),
    }
}

/// The client's half of the handshake. Returns the server's proven name.
pub(crate) async fn client_handshake<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut W,
    node_name: &str,
    secret: &str,
) -> Result<String, NetError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut codec = frame_codec(MAX_HANDSHAKE_FRAME_BYTES);
    let client_nonce = new_nonce();
    let hello = Frame::Hello {
        node_name: node_name.to_owned(),
        nonce: client_nonce,
    };
    write_one(writer, &mut codec, &hello).await?;
    let Frame::Hello {
        node_name: server_name,
        nonce: server_nonce,
    } = read_frame(reader).await?
    else {
        return Err(NetError::Auth("expected the server's hello".into()));
    };
    let transcript = Transcript {
        secret,
        client_nonce,
        server_nonce,
    };
    let proof = Frame::Proof {
        mac: transcript.prove(Role::Client, node_name),
    };
    write_one(writer, &mut codec, &proof).await?;
    match read_frame(reader).await {
        Ok(Frame::Proof { mac }) if transcript.verify(Role::Server, &server_name, &mac) => {
            Ok(server_name)
        }
        Ok(Frame::Proof { .. }) => Err(NetError::Auth(format!(
            "{server_name} could not prove the cluster secret"
        ))),
        Ok(Frame::Refused) => Err(NetError::Auth(format!(
            "{server_name} refused our proof (wrong cluster secret?)"
        ))),
        Ok(_) => Err(NetError::Auth("unexpected frame in handshake".into())),
        Err(NetError::Unreachable(e)) => Err(NetError::Auth(format!(
            "{server_name} closed the handshake: {e}"
        ))),
        Err(e) => Err(e),
    }
}

/// The server's half of the handshake. Returns the client's proven name.
/// On a bad proof it sends [`Frame::Refused`] and returns `Auth`; the caller
/// closes the connection.
pub(crate) async fn server_handshake<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut W,
    node_name: &str,
    secret: &str,
) -> Result<String, NetError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut codec = frame_codec(MAX_HANDSHAKE_FRAME_BYTES);
    let Frame::Hello {
        node_name: client_name,
        nonce: client_nonce,
    } = read_frame(reader).await?
    else {
        return Err(NetError::Auth("first frame was not a hello".into()));
    };
    let server_nonce = new_nonce();
    let hello = Frame::Hello {
        node_name: node_name.to_owned(),
        nonce: server_nonce,
    };
    write_one(writer, &mut codec, &hello).await?;
    let transcript = Transcript {
        secret,
        client_nonce,
        server_nonce,
    };
    let Frame::Proof { mac } = read_frame(reader).await? else {
        return Err(NetError::Auth("expected the client's proof".into()));
    };
    if !transcript.verify(Role::Client, &client_name, &mac) {
        let _ = write_one(writer, &mut codec, &Frame::Refused).await;
        return Err(NetError::Auth(format!(
            "{client_name:?} could not prove the cluster secret"
        )));
    }
    let proof = Frame::Proof {
        mac: transcript.prove(Role::Server, node_name),
    };
    write_one(writer, &mut codec, &proof).await?;
    Ok(client_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(
        client_secret: &str,
        server_secret: &str,
    ) -> (Result<String, NetError>, Result<String, NetError>) {
        let (c, s) = tokio::io::duplex(4096);
        let (cr, mut cw) = tokio::io::split(c);
        let (sr, mut sw) = tokio::io::split(s);
        let client = async {
            let mut reader = handshake_reader(cr);
            client_handshake(&mut reader, &mut cw, "alice", client_secret).await
        };
        let server = async {
            let mut reader = handshake_reader(sr);
            let r = server_handshake(&mut reader, &mut sw, "bob", server_secret).await;
            drop(sw);
            r
        };
        tokio::join!(client, server)
    }

    #[tokio::test]
    async fn same_secret_authenticates_both_ways() {
        let (c, s) = run("s3cret", "s3cret").await;
        assert_eq!(c.unwrap(), "bob");
        assert_eq!(s.unwrap(), "alice");
    }

    #[tokio::test]
    async fn wrong_secret_is_refused_on_both_sides() {
        let (c, s) = run("wrong", "s3cret").await;
        assert!(matches!(c, Err(NetError::Auth(m)) if m.contains("refused")));
        assert!(matches!(s, Err(NetError::Auth(_))));
    }

    #[test]
    fn nonces_differ_and_proofs_bind_role_and_name() {
        assert_ne!(new_nonce(), new_nonce());
        let t = Transcript {
            secret: "k",
            client_nonce: new_nonce(),
            server_nonce: new_nonce(),
        };
        let proof = t.prove(Role::Client, "a");
        assert!(t.verify(Role::Client, "a", &proof));
        assert!(!t.verify(Role::Server, "a", &proof));
        assert!(!t.verify(Role::Client, "b", &proof));
        assert!(!t.verify(Role::Client, "a", &proof[..31]));
    }
}
