//! Fuzzes the RESP request decoder: arbitrary bytes, fed in arbitrary chunk
//! splits, must never panic, and must decode to exactly what the same bytes
//! fed at once decode to (commands and error alike).
//!
//! Input layout: byte 0 = how many chunk-size bytes follow (mod 16); those
//! bytes are the chunk sizes (cycled, 0 read as 1); the rest is the stream.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringkv::resp::codec::{DecodeLimits, RequestDecoder};

/// Commands decoded, and the error that ended decoding, if any.
type Outcome = (Vec<Vec<Vec<u8>>>, Option<String>);

fn run(stream: &[u8], chunk_sizes: &[u8], limits: &DecodeLimits) -> Outcome {
    let mut decoder = RequestDecoder::new(limits.clone());
    let mut buf = BytesMut::new();
    let mut commands = Vec::new();
    let mut rest = stream;
    let mut sizes = chunk_sizes.iter().cycle();
    while !rest.is_empty() {
        let n = sizes
            .next()
            .map_or(rest.len(), |&n| usize::from(n))
            .clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(args)) => commands.push(args.iter().map(|a| a.to_vec()).collect()),
                Ok(None) => break,
                Err(e) => return (commands, Some(e.to_reply_text())),
            }
        }
    }
    (commands, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (chunk_sizes, stream) = rest.split_at(n);
    // Small limits reach the limit checks; default ones the common paths.
    let small = DecodeLimits {
        max_bulk_bytes: 64,
        max_multibulk_len: 8,
        max_inline_bytes: 48,
    };
    for limits in [small, DecodeLimits::default()] {
        let whole = run(stream, &[], &limits);
        let chunked = run(stream, chunk_sizes, &limits);
        assert_eq!(whole, chunked, "result depends on chunking");
        let arg_bytes: usize = whole.0.iter().flatten().map(Vec::len).sum();
        assert!(
            arg_bytes <= stream.len(),
            "decoded more bytes than received"
        );
    }
});
