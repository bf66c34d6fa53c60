//! The request decoder: RESP multibulk arrays and inline commands into argument
//! vectors.
//!
//! Invariants:
//! - Zero-copy: every argument of a multibulk request (and every unquoted inline
//!   token) is a slice of the input buffer; consumed bytes are split off it.
//! - Resumable and O(bytes): bytes of a partial command are consumed once; the
//!   decoder keeps the remaining element count, the arguments so far and a
//!   declared bulk length, and remembers how far it already scanned an inline
//!   line, so a command dribbling in byte by byte is never re-parsed.
//! - Bounded: every count, length and line is checked against [`DecodeLimits`]
//!   (or [`MAX_COUNT_LINE_BYTES`]) before anything is allocated for it, and
//!   preallocation is capped at [`MAX_PREALLOC_ARGS`].
//! - The result never depends on how the input was split into chunks.
//! - Error texts are byte-for-byte what Redis sends after the `-`.

use bytes::{Buf, Bytes, BytesMut};

/// Longest `*<count>` or `$<len>` header line (without `\r\n`) accepted; the
/// longest valid one, `*-9223372036854775808`, is 21 bytes. Not configurable
/// because no legal header can come near it.
pub const MAX_COUNT_LINE_BYTES: usize = 64;

/// Cap on argument-vector preallocation, so a declared `*1000000` costs memory
/// only as its arguments actually arrive.
pub const MAX_PREALLOC_ARGS: usize = 1024;

/// Limits on a single request; exceeding one is a protocol error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest bulk string argument, in bytes (Redis `proto-max-bulk-len`).
    /// Default 16 MiB.
    pub max_bulk_bytes: usize,
    /// Most arguments in one multibulk request. Default 1,048,576.
    pub max_multibulk_len: usize,
    /// Longest inline command line, in bytes including its line ending.
    /// Default 64 KiB (Redis `PROTO_INLINE_MAX_SIZE`).
    pub max_inline_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_bulk_bytes: 16 * 1024 * 1024,
            max_multibulk_len: 1_048_576,
            max_inline_bytes: 64 * 1024,
        }
    }
}

/// A malformed or over-limit request. The connection must reply
/// `-{error}\r\n` (the `Display` text is exactly Redis's) and close.
#[derive(thiserror::Error, Debug)]
pub enum ProtocolError {
    /// `*<count>` is not a number or exceeds `max_multibulk_len`.
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// `$<len>` is not a number, is negative, or exceeds `max_bulk_bytes`.
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// A multibulk element did not start with `$`; holds the byte received.
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0))]
    ExpectedBulk(u8),
    /// An inline line without `\n` within `max_inline_bytes`.
    #[error("Protocol error: too big inline request")]
    TooBigInlineRequest,
    /// A `*<count>` line without `\r` within [`MAX_COUNT_LINE_BYTES`].
    #[error("Protocol error: too big mbulk count string")]
    TooBigMultibulkCount,
    /// A `$<len>` line without `\r` within [`MAX_COUNT_LINE_BYTES`].
    #[error("Protocol error: too big bulk count string")]
    TooBigBulkCount,
    /// An inline command with an unterminated quote, or a closing quote
    /// followed by something other than whitespace.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    /// The `<len>` bytes of a bulk string were not followed by `\r\n`.
    // NOTE: Redis silently skips the two bytes; we refuse, since a wrong length
    // means the client and server disagree about where the next command starts.
    #[error("Protocol error: bulk string not terminated by CRLF")]
    UnterminatedBulk,
    /// Reading from the socket failed (needed by `tokio_util::codec`).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl ProtocolError {
    /// The error reply text, without the leading `-` and trailing `\r\n`.
    pub fn to_reply_text(&self) -> String {
        self.to_string()
    }
}

/// Decodes client requests; see the module docs for its guarantees.
#[derive(Debug)]
pub struct RequestDecoder {
    limits: DecodeLimits,
    /// A multibulk request whose header has been consumed but not all of its
    /// arguments; `None` between requests.
    partial: Option<PartialMultibulk>,
    /// Leading bytes of the buffer already known to hold no `\n` while waiting
    /// for the end of an inline line. Reset whenever bytes are consumed.
    inline_scanned: usize,
}

#[derive(Debug)]
struct PartialMultibulk {
    /// Arguments still to come.
    remaining: usize,
    args: Vec<Bytes>,
    /// Declared length of the bulk being received, once its `$<len>` line has
    /// been consumed.
    bulk_len: Option<usize>,
}

/// Outcome of looking for a `\r\n`-terminated header line.
enum HeaderLine {
    /// The text between the type byte and `\r\n`, and the total line length.
    Complete {
        text_end: usize,
        line_len: usize,
    },
    NeedMore,
    /// No `\r` within the limit.
    TooLong,
    /// A `\r` not followed by `\n`.
    Malformed,
}

/// Outcome of one step at the start of a request.
enum Start {
    NeedMore,
    /// Bytes were consumed without producing a command (`*0`, `*-1`, an empty
    /// inline line); keep decoding.
    Skipped,
    /// A multibulk header was consumed; its arguments follow.
    Multibulk,
    Inline(Vec<Bytes>),
}

impl RequestDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: DecodeLimits) -> Self {
        RequestDecoder {
            limits,
            partial: None,
            inline_scanned: 0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &DecodeLimits {
        &self.limits
    }

    /// `Ok(Some(args))`: one complete command, its bytes removed from `buf`.
    /// `Ok(None)`: more bytes needed (consumed bytes of a partial command are
    /// kept in `self`). `Err`: protocol error; reply with it and close.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        loop {
            if self.partial.is_none() {
                match self.start_request(buf)? {
                    Start::NeedMore => return Ok(None),
                    Start::Skipped | Start::Multibulk => continue,
                    Start::Inline(args) => return Ok(Some(args)),
                }
            }
            return self.continue_multibulk(buf);
        }
    }

    /// Reads the start of a request: a `*<count>` header or an inline line.
    fn start_request(&mut self, buf: &mut BytesMut) -> Result<Start, ProtocolError> {
        let Some(&first) = buf.first() else {
            return Ok(Start::NeedMore);
        };
        if first != b'*' {
            return self.decode_inline(buf);
        }
        let (text_end, line_len) = match find_header_line(buf) {
            HeaderLine::Complete { text_end, line_len } => (text_end, line_len),
            HeaderLine::NeedMore => return Ok(Start::NeedMore),
            HeaderLine::TooLong => return Err(ProtocolError::TooBigMultibulkCount),
            HeaderLine::Malformed => return Err(ProtocolError::InvalidMultibulkLength),
        };
        let count = buf
            .get(1..text_end)
            .and_then(parse_redis_i64)
            .ok_or(ProtocolError::InvalidMultibulkLength)?;
        // Like Redis, a count of zero or less is an empty request, not an error.
        let count = match usize::try_from(count) {
            Ok(0) | Err(_) => {
                buf.advance(line_len);
                return Ok(Start::Skipped);
            }
            Ok(count) if count > self.limits.max_multibulk_len => {
                return Err(ProtocolError::InvalidMultibulkLength);
            }
            Ok(count) => count,
        };
        buf.advance(line_len);
        self.partial = Some(PartialMultibulk {
            remaining: count,
            args: Vec::with_capacity(count.min(MAX_PREALLOC_ARGS)),
            bulk_len: None,
        });
        Ok(Start::Multibulk)
    }

    /// Consumes as many arguments of the current multibulk request as `buf`
    /// holds; returns the command once the last one has arrived.
    fn continue_multibulk(
        &mut self,
        buf: &mut BytesMut,
    ) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let Some(partial) = self.partial.as_mut() else {
            return Ok(None);
        };
        while partial.remaining > 0 {
            let len = match partial.bulk_len {
                Some(len) => len,
                None => match read_bulk_header(buf, self.limits.max_bulk_bytes)? {
                    Some(len) => {
                        partial.bulk_len = Some(len);
                        len
                    }
                    None => return Ok(None),
                },
            };
            // len <= max_bulk_bytes, so this only overflows with absurd limits.
            let needed = len.checked_add(2).ok_or(ProtocolError::InvalidBulkLength)?;
            if buf.len() < needed {
                // Make room for the whole argument at once, so a large value is
                // read into one allocation rather than grown piecemeal.
                buf.reserve(needed - buf.len());
                return Ok(None);
            }
            if buf.get(len..needed) != Some(b"\r\n".as_slice()) {
                return Err(ProtocolError::UnterminatedBulk);
            }
            let mut arg = buf.split_to(needed);
            arg.truncate(len);
            partial.args.push(arg.freeze());
            partial.remaining -= 1;
            partial.bulk_len = None;
        }
        Ok(self.partial.take().map(|p| p.args))
    }

    /// Reads one inline command line (terminated by `\n` or `\r\n`).
    fn decode_inline(&mut self, buf: &mut BytesMut) -> Result<Start, ProtocolError> {
        let window = buf.len().min(self.limits.max_inline_bytes);
        let unscanned = buf.get(self.inline_scanned..window).unwrap_or_default();
        let Some(offset) = unscanned.iter().position(|&b| b == b'\n') else {
            if buf.len() >= self.limits.max_inline_bytes {
                return Err(ProtocolError::TooBigInlineRequest);
            }
            self.inline_scanned = window;
            return Ok(Start::NeedMore);
        };
        let newline = self.inline_scanned + offset;
        self.inline_scanned = 0;
        let mut line = buf.split_to(newline + 1);
        line.truncate(newline);
        if line.last() == Some(&b'\r') {
            line.truncate(newline - 1);
        }
        let args = split_inline_args(&line.freeze())?;
        if args.is_empty() {
            return Ok(Start::Skipped);
        }
        Ok(Start::Inline(args))
    }
}

impl tokio_util::codec::Decoder for RequestDecoder {
    type Item = Vec<Bytes>;
    type Error = ProtocolError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        RequestDecoder::decode(self, buf)
    }

    /// A command cut short by the peer closing is dropped silently (there is
    /// no one left to send an error to), rather than surfacing as an I/O error.
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        let decoded = RequestDecoder::decode(self, buf)?;
        if decoded.is_none() {
            buf.clear();
            self.partial = None;
            self.inline_scanned = 0;
        }
        Ok(decoded)
    }
}

/// Reads a `$<len>\r\n` bulk header, consuming it. `Ok(None)` if incomplete.
fn read_bulk_header(
    buf: &mut BytesMut,
    max_bulk_bytes: usize,
) -> Result<Option<usize>, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != b'$' {
        return Err(ProtocolError::ExpectedBulk(first));
    }
    let (text_end, line_len) = match find_header_line(buf) {
        HeaderLine::Complete { text_end, line_len } => (text_end, line_len),
        HeaderLine::NeedMore => return Ok(None),
        HeaderLine::TooLong => return Err(ProtocolError::TooBigBulkCount),
        HeaderLine::Malformed => return Err(ProtocolError::InvalidBulkLength),
    };
    let len = buf
        .get(1..text_end)
        .and_then(parse_redis_i64)
        .and_then(|len| usize::try_from(len).ok())
        .filter(|&len| len <= max_bulk_bytes)
        .ok_or(ProtocolError::InvalidBulkLength)?;
    buf.advance(line_len);
    Ok(Some(len))
}

/// Finds the `\r\n` ending a header line that starts at `buf[0]`, looking at
/// no more than [`MAX_COUNT_LINE_BYTES`] bytes (so rescanning it on every
/// call is bounded work).
fn find_header_line(buf: &[u8]) -> HeaderLine {
    let window = buf.get(..MAX_COUNT_LINE_BYTES + 1).unwrap_or(buf);
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        return if buf.len() > MAX_COUNT_LINE_BYTES {
            HeaderLine::TooLong
        } else {
            HeaderLine::NeedMore
        };
    };
    match buf.get(cr + 1) {
        None => HeaderLine::NeedMore,
        Some(b'\n') => HeaderLine::Complete {
            text_end: cr,
            line_len: cr + 2,
        },
        Some(_) => HeaderLine::Malformed,
    }
}

/// Parses a decimal integer exactly as Redis's `string2ll`: an optional `-`,
/// no `+`, no leading zeros (except `0` itself), no spaces, no overflow.
fn parse_redis_i64(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text.split_first()? {
        (b'-', rest) => (true, rest),
        _ => (false, text),
    };
    match digits {
        [b'0'] if !negative => return Some(0),
        [] | [b'0', ..] => return None,
        _ => {}
    }
    let mut value: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let digit = i64::from(d - b'0');
        // Accumulate negatively so i64::MIN parses without overflow.
        value = value.checked_mul(10)?.checked_sub(digit)?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

/// One argument of an inline command.
enum InlineToken {
    /// Unquoted: a range of the line, shared without copying.
    Slice(usize, usize),
    /// Contained quotes or escapes, so it was rebuilt.
    Owned(Vec<u8>),
}

/// Splits an inline command like Redis's `sdssplitargs`: whitespace separates
/// arguments; `"..."` understands `\n \r \t \b \a \\ \"` and `\xHH`; `'...'`
/// understands only `\'`; a closing quote must be followed by whitespace or
/// the end of the line. A NUL byte ends the line, as in C.
fn split_inline_args(line: &Bytes) -> Result<Vec<Bytes>, ProtocolError> {
    let end = line.iter().position(|&b| b == 0).unwrap_or(line.len());
    let text = line.get(..end).unwrap_or_default();
    let mut args = Vec::new();
    let mut pos = 0;
    loop {
        while text.get(pos).is_some_and(|b| is_c_space(*b)) {
            pos += 1;
        }
        if pos >= text.len() {
            return Ok(args);
        }
        let (token, next) = read_inline_token(text, pos)?;
        args.push(match token {
            InlineToken::Slice(start, stop) => line.slice(start..stop),
            InlineToken::Owned(bytes) => Bytes::from(bytes),
        });
        pos = next;
    }
}

/// Reads the token starting at `text[start]` (not whitespace); returns it and
/// the position after it.
fn read_inline_token(text: &[u8], start: usize) -> Result<(InlineToken, usize), ProtocolError> {
    let mut pos = start;
    while let Some(&b) = text.get(pos) {
        match b {
            b' ' | b'\n' | b'\r' | b'\t' => break,
            b'"' | b'\'' => {
                // A quote, even mid-token, switches to building a copy; the
                // closing quote ends the token.
                let mut owned = text.get(start..pos).unwrap_or_default().to_vec();
                let next = if b == b'"' {
                    read_double_quoted(text, pos + 1, &mut owned)?
                } else {
                    read_single_quoted(text, pos + 1, &mut owned)?
                };
                return Ok((InlineToken::Owned(owned), next));
            }
            _ => pos += 1,
        }
    }
    Ok((InlineToken::Slice(start, pos), pos))
}

/// Reads the inside of `"..."` starting after the opening quote; returns the
/// position after the closing quote.
fn read_double_quoted(
    text: &[u8],
    mut pos: usize,
    out: &mut Vec<u8>,
) -> Result<usize, ProtocolError> {
    loop {
        match (text.get(pos), text.get(pos + 1)) {
            (None, _) => return Err(ProtocolError::UnbalancedQuotes),
            (Some(b'"'), after) => return closing_quote(after, pos + 1),
            (Some(b'\\'), Some(b'x')) => {
                let hex = (
                    text.get(pos + 2).and_then(hex_value),
                    text.get(pos + 3).and_then(hex_value),
                );
                if let (Some(hi), Some(lo)) = hex {
                    out.push(hi * 16 + lo);
                    pos += 4;
                } else {
                    out.push(b'x');
                    pos += 2;
                }
            }
            (Some(b'\\'), Some(&escaped)) => {
                out.push(match escaped {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'b' => 0x08,
                    b'a' => 0x07,
                    other => other,
                });
                pos += 2;
            }
            (Some(&b), _) => {
                out.push(b);
                pos += 1;
            }
        }
    }
}

/// Reads the inside of `'...'` starting after the opening quote; returns the
/// position after the closing quote.
fn read_single_quoted(
    text: &[u8],
    mut pos: usize,
    out: &mut Vec<u8>,
) -> Result<usize, ProtocolError> {
    loop {
        match (text.get(pos), text.get(pos + 1)) {
            (None, _) => return Err(ProtocolError::UnbalancedQuotes),
            (Some(b'\\'), Some(b'\'')) => {
                out.push(b'\'');
                pos += 2;
            }
            (Some(b'\''), after) => return closing_quote(after, pos + 1),
            (Some(&b), _) => {
                out.push(b);
                pos += 1;
            }
        }
    }
}

/// A closing quote must be followed by whitespace or the end of the line.
fn closing_quote(after: Option<&u8>, next: usize) -> Result<usize, ProtocolError> {
    match after {
        Some(&b) if !is_c_space(b) => Err(ProtocolError::UnbalancedQuotes),
        _ => Ok(next),
    }
}

/// C's `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex_value(b: &u8) -> Option<u8> {
    char::from(*b)
        .to_digit(16)
        .and_then(|v| u8::try_from(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Commands = Vec<Vec<Vec<u8>>>;

    /// Feeds `input` in chunks of the given sizes (cycled; the rest at once if
    /// empty) and collects every command and the first error's text.
    fn decode_chunked(
        input: &[u8],
        chunk_sizes: &[usize],
        limits: DecodeLimits,
    ) -> (Commands, Option<String>) {
        let mut decoder = RequestDecoder::new(limits);
        let mut buf = BytesMut::new();
        let mut commands = Vec::new();
        let mut rest = input;
        let mut sizes = chunk_sizes.iter().cycle();
        while !rest.is_empty() {
            let n = sizes
                .next()
                .copied()
                .unwrap_or(rest.len())
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

    fn decode_all(input: &[u8]) -> (Commands, Option<String>) {
        decode_chunked(input, &[], DecodeLimits::default())
    }

    fn cmd(args: &[&str]) -> Vec<Vec<u8>> {
        args.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    fn err(input: &[u8]) -> String {
        decode_all(input)
            .1
            .unwrap_or_else(|| panic!("no error for {:?}", String::from_utf8_lossy(input)))
    }

    fn encode_multibulk(args: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    #[test]
    fn multibulk_command() {
        let (cmds, e) = decode_all(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv\r\nx\0\r\n");
        assert_eq!(e, None);
        assert_eq!(
            cmds,
            vec![vec![b"SET".to_vec(), b"k".to_vec(), b"v\r\nx\0".to_vec()]]
        );
    }

    #[test]
    fn empty_bulk_argument() {
        assert_eq!(
            decode_all(b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n").0,
            vec![cmd(&["GET", ""])]
        );
    }

    #[test]
    fn pipelined_commands_come_out_in_order() {
        let input = b"*1\r\n$4\r\nPING\r\nECHO hi\r\n*2\r\n$3\r\nGET\r\n$1\r\na\r\nPING\n";
        let mut decoder = RequestDecoder::new(DecodeLimits::default());
        let mut buf = BytesMut::from(&input[..]);
        let mut got = Vec::new();
        while let Some(args) = decoder.decode(&mut buf).unwrap() {
            got.push(args.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
        }
        assert!(buf.is_empty());
        assert_eq!(
            got,
            vec![
                cmd(&["PING"]),
                cmd(&["ECHO", "hi"]),
                cmd(&["GET", "a"]),
                cmd(&["PING"])
            ]
        );
    }

    #[test]
    fn arguments_are_slices_of_the_input() {
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\nSET a b\r\n"[..]);
        let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
        let mut decoder = RequestDecoder::new(DecodeLimits::default());
        let mut all = decoder.decode(&mut buf).unwrap().unwrap();
        all.extend(decoder.decode(&mut buf).unwrap().unwrap());
        for arg in &all {
            assert!(
                range.contains(&(arg.as_ptr() as usize)),
                "{arg:?} was copied"
            );
        }
    }

    #[test]
    fn empty_requests_are_skipped() {
        let (cmds, e) = decode_all(b"*0\r\n*-1\r\n\r\n\n   \r\n*1\r\n$4\r\nPING\r\n");
        assert_eq!(e, None);
        assert_eq!(cmds, vec![cmd(&["PING"])]);
    }

    #[test]
    fn inline_commands() {
        let cases: &[(&[u8], Vec<Vec<u8>>)] = &[
            (b"PING\r\n", cmd(&["PING"])),
            (b"PING\n", cmd(&["PING"])),
            (b"  set a   b \t\r\n", cmd(&["set", "a", "b"])),
            (b"set a \"b c\"\r\n", cmd(&["set", "a", "b c"])),
            (b"set a 'b c'\r\n", cmd(&["set", "a", "b c"])),
            (b"echo \"\"\r\n", cmd(&["echo", ""])),
            (
                b"echo \"\\n\\r\\t\\b\\a\\\\\\\"\\q\"\n",
                vec![b"echo".to_vec(), b"\n\r\t\x08\x07\\\"q".to_vec()],
            ),
            (b"echo \"\\x41\\x4a\\xzz\"\n", cmd(&["echo", "AJxzz"])),
            (b"echo '\\'x\\n'\n", cmd(&["echo", "'x\\n"])),
            (b"echo ab\"c d\"\n", cmd(&["echo", "abc d"])),
            (b"echo a\x0bb\n", cmd(&["echo", "a\x0bb"])),
            (b"echo \"a\"\x0bb\n", cmd(&["echo", "a", "b"])),
            (b"echo a\0b c\n", cmd(&["echo", "a"])),
            (b"echo a\rb\r\n", cmd(&["echo", "a", "b"])),
        ];
        for (input, want) in cases {
            let (cmds, e) = decode_all(input);
            assert_eq!(e, None, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(
                &cmds,
                &vec![want.clone()],
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn unbalanced_quotes() {
        for input in [
            &b"set a \"b\n"[..],
            b"set a 'b\n",
            b"set \"a\"b c\n",
            b"set 'a'b\n",
            b"set \"a\\\"\n",
        ] {
            assert_eq!(
                err(input),
                "Protocol error: unbalanced quotes in request",
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn error_texts_match_redis() {
        let cases: &[(&[u8], &str)] = &[
            (b"*abc\r\n", "Protocol error: invalid multibulk length"),
            (b"*01\r\n", "Protocol error: invalid multibulk length"),
            (b"*+1\r\n", "Protocol error: invalid multibulk length"),
            (b"*\r\n", "Protocol error: invalid multibulk length"),
            (b"*1\rX", "Protocol error: invalid multibulk length"),
            (
                b"*99999999999999999999\r\n",
                "Protocol error: invalid multibulk length",
            ),
            (b"*1\r\nX", "Protocol error: expected '$', got 'X'"),
            (
                b"*2\r\n$1\r\na\r\n:1\r\n",
                "Protocol error: expected '$', got ':'",
            ),
            (b"*1\r\n$-1\r\n", "Protocol error: invalid bulk length"),
            (b"*1\r\n$x\r\n", "Protocol error: invalid bulk length"),
            (b"*1\r\n$\r\n", "Protocol error: invalid bulk length"),
            (
                b"*1\r\n$3\r\nfooXY",
                "Protocol error: bulk string not terminated by CRLF",
            ),
            (
                b"*1\r\n$3\r\nfoo\rX",
                "Protocol error: bulk string not terminated by CRLF",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&err(input), want, "{:?}", String::from_utf8_lossy(input));
        }
        let long_count = [b"*".as_slice(), &[b'1'; 100]].concat();
        assert_eq!(
            err(&long_count),
            "Protocol error: too big mbulk count string"
        );
        let long_len = [b"*1\r\n$".as_slice(), &[b'1'; 100]].concat();
        assert_eq!(err(&long_len), "Protocol error: too big bulk count string");
    }

    #[test]
    fn limits_are_enforced() {
        let limits = DecodeLimits {
            max_bulk_bytes: 5,
            max_multibulk_len: 2,
            max_inline_bytes: 16,
        };
        let run = |input: &[u8]| decode_chunked(input, &[], limits.clone());
        assert_eq!(run(b"*2\r\n$5\r\nhello\r\n$0\r\n\r\n").1, None);
        assert_eq!(
            run(b"*3\r\n").1.as_deref(),
            Some("Protocol error: invalid multibulk length")
        );
        assert_eq!(
            run(b"*1\r\n$6\r\n").1.as_deref(),
            Some("Protocol error: invalid bulk length")
        );
        assert_eq!(run(b"0123456789abcd\r\n").1, None);
        assert_eq!(
            run(b"0123456789abcde\r\n").1.as_deref(),
            Some("Protocol error: too big inline request")
        );
        // Decided without waiting for a newline that would come too late.
        assert_eq!(
            run(&[b'a'; 16]).1.as_deref(),
            Some("Protocol error: too big inline request")
        );
        let default = DecodeLimits::default();
        assert_eq!(default.max_bulk_bytes, 16 << 20);
        assert_eq!(default.max_multibulk_len, 1_048_576);
        assert_eq!(default.max_inline_bytes, 64 << 10);
    }

    #[test]
    fn huge_declared_count_does_not_preallocate() {
        let mut decoder = RequestDecoder::new(DecodeLimits::default());
        let mut buf = BytesMut::from(&b"*1048576\r\n$1\r\na\r\n"[..]);
        assert!(decoder.decode(&mut buf).unwrap().is_none());
        let partial = decoder.partial.as_ref().unwrap();
        assert!(partial.args.capacity() <= MAX_PREALLOC_ARGS);
        assert_eq!(partial.remaining, 1_048_575);
    }

    #[test]
    fn big_bulk_waits_without_reparsing_and_reserves() {
        let mut decoder = RequestDecoder::new(DecodeLimits::default());
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nSET\r\n$100000\r\n"[..]);
        assert!(decoder.decode(&mut buf).unwrap().is_none());
        // Header and first argument are consumed; the declared length is kept.
        assert!(buf.is_empty());
        assert!(buf.capacity() >= 100_002);
        assert_eq!(decoder.partial.as_ref().unwrap().bulk_len, Some(100_000));
        buf.extend_from_slice(&[b'v'; 60_000]);
        assert!(decoder.decode(&mut buf).unwrap().is_none());
        assert_eq!(buf.len(), 60_000);
        buf.extend_from_slice(&[b'v'; 40_000]);
        buf.extend_from_slice(b"\r\n");
        let args = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!(args.len(), 2);
        assert_eq!(args[1].len(), 100_000);
    }

    #[test]
    fn slow_inline_line_is_scanned_once() {
        let mut decoder = RequestDecoder::new(DecodeLimits::default());
        let mut buf = BytesMut::new();
        for _ in 0..1000 {
            buf.extend_from_slice(b"a");
            assert!(decoder.decode(&mut buf).unwrap().is_none());
            assert_eq!(decoder.inline_scanned, buf.len());
        }
        buf.extend_from_slice(b" b\r\n");
        let args = decoder.decode(&mut buf).unwrap().unwrap();
        assert_eq!(args[0].len(), 1000);
        assert_eq!(decoder.inline_scanned, 0);
    }

    #[test]
    fn every_split_point_gives_the_same_commands() {
        let input: &[u8] =
            b"*2\r\n$4\r\nECHO\r\n$5\r\nhe\r\no\r\nset a \"b c\"\r\n*0\r\n\n*1\r\n$4\r\nPING\r\n";
        let expected = decode_all(input);
        assert_eq!(expected.0.len(), 3);
        for split in 1..input.len() {
            assert_eq!(
                decode_chunked(input, &[split, input.len()], DecodeLimits::default()),
                expected,
                "split {split}"
            );
        }
        assert_eq!(
            decode_chunked(input, &[1], DecodeLimits::default()),
            expected
        );
    }

    #[test]
    fn tokio_decoder_drops_partial_command_at_eof() {
        use tokio_util::codec::Decoder;
        let mut decoder = RequestDecoder::new(DecodeLimits::default());
        let mut buf = BytesMut::from(&b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET"[..]);
        assert_eq!(
            Decoder::decode_eof(&mut decoder, &mut buf)
                .unwrap()
                .unwrap()
                .len(),
            1
        );
        assert!(
            Decoder::decode_eof(&mut decoder, &mut buf)
                .unwrap()
                .is_none()
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn io_errors_convert() {
        let e: ProtocolError = std::io::Error::other("boom").into();
        assert!(matches!(e, ProtocolError::Io(_)));
    }

    #[test]
    fn parse_redis_i64_matches_string2ll() {
        assert_eq!(parse_redis_i64(b"0"), Some(0));
        assert_eq!(parse_redis_i64(b"-1"), Some(-1));
        assert_eq!(parse_redis_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_redis_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"00",
            b"+1",
            b" 1",
            b"1 ",
            b"9223372036854775808",
            b"1a",
        ] {
            assert_eq!(
                parse_redis_i64(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Small limits, so random input reaches the limit checks too.
    fn small_limits() -> DecodeLimits {
        DecodeLimits {
            max_bulk_bytes: 64,
            max_multibulk_len: 8,
            max_inline_bytes: 48,
        }
    }

    /// Random input biased towards RESP-looking bytes.
    fn resp_ish_bytes() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            any::<u8>(),
            prop::sample::select(b"*$\r\n0123456789-\"' \\xa".to_vec()),
        ];
        prop::collection::vec(byte, 0..200)
    }

    fn inline_token() -> impl Strategy<Value = (String, Vec<u8>)> {
        prop_oneof![
            "[a-zA-Z0-9_.:{}-]{1,12}".prop_map(|t| (t.clone(), t.into_bytes())),
            prop::collection::vec(any::<u8>(), 0..12).prop_map(|raw| {
                let quoted = raw
                    .iter()
                    .map(|b| format!("\\x{b:02x}"))
                    .collect::<String>();
                (format!("\"{quoted}\""), raw)
            }),
            "[a-z \"]{0,12}".prop_map(|t| (format!("'{t}'"), t.into_bytes())),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_chunks_never_panic_and_agree(
            input in resp_ish_bytes(),
            chunks in prop::collection::vec(1usize..20, 0..10),
        ) {
            for limits in [small_limits(), DecodeLimits::default()] {
                let whole = decode_chunked(&input, &[], limits.clone());
                let split = decode_chunked(&input, &chunks, limits);
                prop_assert_eq!(whole, split);
            }
        }

        #[test]
        fn multibulk_round_trips(
            commands in prop::collection::vec(prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6), 1..4),
            chunks in prop::collection::vec(1usize..30, 0..6),
        ) {
            let input: Vec<u8> = commands.iter().flat_map(|c| encode_multibulk(c)).collect();
            let (decoded, e) = decode_chunked(&input, &chunks, DecodeLimits::default());
            prop_assert_eq!(e, None);
            prop_assert_eq!(decoded, commands);
        }

        #[test]
        fn inline_round_trips(
            tokens in prop::collection::vec(inline_token(), 1..6),
            crlf in any::<bool>(),
            chunks in prop::collection::vec(1usize..10, 0..6),
        ) {
            let (texts, raw): (Vec<String>, Vec<Vec<u8>>) = tokens.into_iter().unzip();
            let mut line = texts.join(" ").into_bytes();
            line.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            let (decoded, e) = decode_chunked(&line, &chunks, DecodeLimits::default());
            prop_assert_eq!(e, None);
            prop_assert_eq!(decoded, vec![raw]);
        }
    }
}
