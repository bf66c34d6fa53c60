//! Reply frames and their RESP2/RESP3 wire encoding.
//!
//! Invariants: [`Frame::encode`] writes exactly one complete, well-formed reply
//! for the chosen [`Protocol`] straight into the output buffer (no intermediate
//! `String` for numbers or lengths), and never emits a bare `\r` or `\n` inside a
//! simple-string or error line: they are replaced by spaces, as Redis does.
//! RESP3-only types degrade to their RESP2 equivalents exactly as Redis replies
//! to a RESP2 client.

use std::borrow::Cow;
use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

/// The protocol version a connection negotiated (`HELLO 2` / `HELLO 3`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// RESP2, what every client speaks until it sends `HELLO 3`.
    #[default]
    Resp2,
    /// RESP3, with maps, sets, doubles, booleans and a single null type.
    Resp3,
}

/// One reply to a client.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// `+OK`: a status line. `\r` and `\n` are replaced by spaces on encode.
    Simple(Cow<'static, str>),
    /// `-ERR ...`: the text starts with the error code word (e.g. `"ERR syntax
    /// error"`); the leading `-` is added by the encoder. `\r` and `\n` are
    /// replaced by spaces on encode.
    Error(Cow<'static, str>),
    /// `:42`
    Integer(i64),
    /// `$3\r\nfoo`: a binary-safe string.
    Bulk(Bytes),
    /// A missing value: RESP2 `$-1`, RESP3 `_`.
    Null,
    /// A missing aggregate: RESP2 `*-1`, RESP3 `_`.
    NullArray,
    /// `*n` followed by the elements.
    Array(Vec<Frame>),
    /// RESP3 `%n` of key/value pairs; RESP2 a flat array of `2n` elements.
    Map(Vec<(Frame, Frame)>),
    /// RESP3 `~n`; RESP2 a plain array.
    Set(Vec<Frame>),
    /// RESP3 `,1.5` (`inf`, `-inf`, `nan` for the specials); RESP2 a bulk
    /// string of the same text.
    Double(f64),
    /// RESP3 `#t`/`#f`; RESP2 the integer `1`/`0`.
    Boolean(bool),
    /// RESP3 `=len\r\ntxt:...` (a text document such as `INFO`'s); RESP2 a bulk
    /// string of the text. Holds the text without the `txt:` prefix.
    Verbatim(Bytes),
}

impl Frame {
    /// `+OK`
    pub fn ok() -> Frame {
        Frame::Simple(Cow::Borrowed("OK"))
    }

    /// An error reply; `text` starts with the error code, e.g. `"ERR syntax error"`.
    pub fn error(text: impl Into<Cow<'static, str>>) -> Frame {
        Frame::Error(text.into())
    }

    /// A bulk string reply.
    pub fn bulk(data: impl Into<Bytes>) -> Frame {
        Frame::Bulk(data.into())
    }

    /// Appends the wire encoding of `self` for `proto` to `out`.
    pub fn encode(&self, proto: Protocol, out: &mut BytesMut) {
        let resp3 = proto == Protocol::Resp3;
        match self {
            Frame::Simple(text) => put_line(out, b'+', text),
            Frame::Error(text) => put_line(out, b'-', text),
            Frame::Integer(n) => put_header(out, b':', *n),
            Frame::Bulk(data) => put_bulk(out, data),
            Frame::Null if resp3 => out.extend_from_slice(b"_\r\n"),
            Frame::Null => out.extend_from_slice(b"$-1\r\n"),
            Frame::NullArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Frame::NullArray => out.extend_from_slice(b"*-1\r\n"),
            Frame::Array(items) => put_aggregate(out, b'*', items, proto),
            Frame::Set(items) => {
                let prefix = if resp3 { b'~' } else { b'*' };
                put_aggregate(out, prefix, items, proto);
            }
            Frame::Map(pairs) => put_map(out, pairs, proto),
            Frame::Double(d) => put_double(out, *d, proto),
            Frame::Boolean(b) if resp3 => {
                out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" })
            }
            Frame::Boolean(b) => out.extend_from_slice(if *b { b":1\r\n" } else { b":0\r\n" }),
            Frame::Verbatim(text) if resp3 => {
                put_header(out, b'=', text.len() + VERBATIM_TXT.len());
                out.reserve(VERBATIM_TXT.len() + text.len() + 2);
                out.extend_from_slice(VERBATIM_TXT);
                out.extend_from_slice(text);
                out.extend_from_slice(b"\r\n");
            }
            Frame::Verbatim(text) => put_bulk(out, text),
        }
    }
}

/// The format tag Redis puts in front of verbatim text replies.
const VERBATIM_TXT: &[u8] = b"txt:";

/// Writes `prefix`, the decimal `n`, and `\r\n`.
fn put_header(out: &mut BytesMut, prefix: u8, n: impl itoa::Integer) {
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n).as_bytes();
    out.reserve(digits.len() + 3);
    out.put_u8(prefix);
    out.extend_from_slice(digits);
    out.extend_from_slice(b"\r\n");
}

/// Writes a simple-string or error line, replacing `\r`/`\n` so the reply
/// cannot be split into two (Redis does the same for error replies).
fn put_line(out: &mut BytesMut, prefix: u8, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 3);
    out.put_u8(prefix);
    if bytes.iter().any(|&b| b == b'\r' || b == b'\n') {
        out.extend(
            bytes
                .iter()
                .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
    } else {
        out.extend_from_slice(bytes);
    }
    out.extend_from_slice(b"\r\n");
}

fn put_bulk(out: &mut BytesMut, data: &[u8]) {
    put_header(out, b'$', data.len());
    out.reserve(data.len() + 2);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

fn put_aggregate(out: &mut BytesMut, prefix: u8, items: &[Frame], proto: Protocol) {
    put_header(out, prefix, items.len());
    for item in items {
        item.encode(proto, out);
    }
}

fn put_map(out: &mut BytesMut, pairs: &[(Frame, Frame)], proto: Protocol) {
    match proto {
        Protocol::Resp3 => put_header(out, b'%', pairs.len()),
        // NOTE: saturating is unreachable in practice (a Vec of pairs cannot
        // hold usize::MAX / 2 elements) but keeps the arithmetic panic-free.
        Protocol::Resp2 => put_header(out, b'*', pairs.len().saturating_mul(2)),
    }
    for (key, value) in pairs {
        key.encode(proto, out);
        value.encode(proto, out);
    }
}

fn put_double(out: &mut BytesMut, d: f64, proto: Protocol) {
    let mut text = StackText::new();
    if format_double(d, &mut text).is_err() {
        // NOTE: unreachable: the longest text format_double writes is 25
        // bytes, well inside StackText. Kept as a cold fallback so a
        // formatting surprise still yields a valid reply.
        let fallback = d.to_string();
        return put_double_text(out, fallback.as_bytes(), proto);
    }
    put_double_text(out, text.as_bytes(), proto);
}

fn put_double_text(out: &mut BytesMut, text: &[u8], proto: Protocol) {
    match proto {
        Protocol::Resp3 => {
            out.reserve(text.len() + 3);
            out.put_u8(b',');
            out.extend_from_slice(text);
            out.extend_from_slice(b"\r\n");
        }
        Protocol::Resp2 => put_bulk(out, text),
    }
}

/// Formats `d` the way Redis's `d2string` does (Redis >= 7.2): `nan`, `inf`,
/// `-inf`, `0`/`-0`, integral values as integers, and otherwise the shortest
/// round-tripping digits laid out by fpconv's rules (plain decimal for
/// moderate exponents, `1.5e-7` / `1e+20` style beyond them).
fn format_double(d: f64, out: &mut StackText) -> std::fmt::Result {
    if d.is_nan() {
        return out.write_str("nan");
    }
    if d.is_infinite() {
        return out.write_str(if d > 0.0 { "inf" } else { "-inf" });
    }
    if d == 0.0 {
        return out.write_str(if d.is_sign_negative() { "-0" } else { "0" });
    }
    // Redis's double2ll: exact integers within +-LLONG_MAX/2 print as integers.
    const INT_LIMIT: f64 = (i64::MAX / 2) as f64;
    if d.fract() == 0.0 && (-INT_LIMIT..=INT_LIMIT).contains(&d) {
        let mut digits = itoa::Buffer::new();
        return out.write_str(digits.format(d as i64));
    }
    if d < 0.0 {
        out.write_char('-')?;
    }
    // `{:e}` yields the shortest round-tripping digits as `d[.ddd]e[-]x`.
    let mut sci = StackText::new();
    write!(sci, "{:e}", d.abs())?;
    let sci = sci.as_str();
    let (mantissa, exponent) = sci.split_once('e').ok_or(std::fmt::Error)?;
    let exponent: i32 = exponent.parse().map_err(|_| std::fmt::Error)?;
    let mut digits = StackText::new();
    for c in mantissa.chars().filter(char::is_ascii_digit) {
        digits.write_char(c)?;
    }
    emit_fpconv_digits(digits.as_str(), exponent, out)
}

/// Port of fpconv's `emit_digits`: lays out `digits` (no sign, no dot) whose
/// first digit has decimal exponent `exponent`.
fn emit_fpconv_digits(digits: &str, exponent: i32, out: &mut StackText) -> std::fmt::Result {
    let ndigits = i32::try_from(digits.len()).map_err(|_| std::fmt::Error)?;
    // k: the decimal exponent of the last digit.
    let k = exponent - (ndigits - 1);
    let abs_exp = exponent.abs();
    if k >= 0 && abs_exp < ndigits + 7 {
        out.write_str(digits)?;
        for _ in 0..k {
            out.write_char('0')?;
        }
        return Ok(());
    }
    if k < 0 && (k > -7 || abs_exp < 4) {
        let offset = ndigits + k;
        if offset <= 0 {
            out.write_str("0.")?;
            for _ in 0..-offset {
                out.write_char('0')?;
            }
            return out.write_str(digits);
        }
        let (int_part, frac_part) = digits.split_at(offset.unsigned_abs() as usize);
        return write!(out, "{int_part}.{frac_part}");
    }
    let (first, rest) = digits.split_at(1.min(digits.len()));
    out.write_str(first)?;
    if !rest.is_empty() {
        write!(out, ".{rest}")?;
    }
    let sign = if exponent < 0 { '-' } else { '+' };
    write!(out, "e{sign}{}", exponent.unsigned_abs())
}

/// A fixed-size stack buffer for formatting doubles without allocating.
struct StackText {
    bytes: [u8; 64],
    len: usize,
}

impl StackText {
    fn new() -> Self {
        StackText {
            bytes: [0; 64],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or_default()
    }

    fn as_str(&self) -> &str {
        // Only `write_str` fills the buffer, with whole `&str`s, so it is UTF-8.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(std::fmt::Error)?;
        let dst = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(frame: &Frame, proto: Protocol) -> Vec<u8> {
        let mut out = BytesMut::new();
        frame.encode(proto, &mut out);
        out.to_vec()
    }

    /// Asserts the RESP2 and RESP3 encodings of `frame`.
    #[track_caller]
    fn check(frame: Frame, resp2: &[u8], resp3: &[u8]) {
        assert_eq!(
            enc(&frame, Protocol::Resp2),
            resp2,
            "RESP2 {frame:?}: {:?}",
            String::from_utf8_lossy(&enc(&frame, Protocol::Resp2))
        );
        assert_eq!(
            enc(&frame, Protocol::Resp3),
            resp3,
            "RESP3 {frame:?}: {:?}",
            String::from_utf8_lossy(&enc(&frame, Protocol::Resp3))
        );
    }

    #[test]
    fn default_protocol_is_resp2() {
        assert_eq!(Protocol::default(), Protocol::Resp2);
    }

    #[test]
    fn simple_and_ok() {
        check(Frame::ok(), b"+OK\r\n", b"+OK\r\n");
        check(Frame::Simple("PONG".into()), b"+PONG\r\n", b"+PONG\r\n");
        check(Frame::Simple("".into()), b"+\r\n", b"+\r\n");
    }

    #[test]
    fn error_and_newline_stripping() {
        check(
            Frame::error("ERR syntax error"),
            b"-ERR syntax error\r\n",
            b"-ERR syntax error\r\n",
        );
        check(
            Frame::error(String::from("ERR bad\r\nthing\n")),
            b"-ERR bad  thing \r\n",
            b"-ERR bad  thing \r\n",
        );
        check(Frame::Simple("a\rb".into()), b"+a b\r\n", b"+a b\r\n");
    }

    #[test]
    fn integers() {
        check(Frame::Integer(0), b":0\r\n", b":0\r\n");
        check(Frame::Integer(-17), b":-17\r\n", b":-17\r\n");
        check(
            Frame::Integer(i64::MIN),
            b":-9223372036854775808\r\n",
            b":-9223372036854775808\r\n",
        );
        check(
            Frame::Integer(i64::MAX),
            b":9223372036854775807\r\n",
            b":9223372036854775807\r\n",
        );
    }

    #[test]
    fn bulk_strings() {
        check(Frame::bulk("foo"), b"$3\r\nfoo\r\n", b"$3\r\nfoo\r\n");
        check(Frame::bulk(""), b"$0\r\n\r\n", b"$0\r\n\r\n");
        check(
            Frame::bulk(&b"a\r\n\0b"[..]),
            b"$5\r\na\r\n\0b\r\n",
            b"$5\r\na\r\n\0b\r\n",
        );
        let big = vec![b'x'; 1000];
        let mut expected = b"$1000\r\n".to_vec();
        expected.extend_from_slice(&big);
        expected.extend_from_slice(b"\r\n");
        check(Frame::bulk(big), &expected, &expected);
    }

    #[test]
    fn nulls() {
        check(Frame::Null, b"$-1\r\n", b"_\r\n");
        check(Frame::NullArray, b"*-1\r\n", b"_\r\n");
    }

    #[test]
    fn arrays() {
        check(Frame::Array(vec![]), b"*0\r\n", b"*0\r\n");
        check(
            Frame::Array(vec![
                Frame::bulk("a"),
                Frame::Integer(1),
                Frame::Null,
                Frame::Array(vec![Frame::ok()]),
            ]),
            b"*4\r\n$1\r\na\r\n:1\r\n$-1\r\n*1\r\n+OK\r\n",
            b"*4\r\n$1\r\na\r\n:1\r\n_\r\n*1\r\n+OK\r\n",
        );
    }

    #[test]
    fn maps() {
        check(Frame::Map(vec![]), b"*0\r\n", b"%0\r\n");
        check(
            Frame::Map(vec![
                (Frame::bulk("k"), Frame::Integer(1)),
                (Frame::bulk("b"), Frame::Boolean(true)),
            ]),
            b"*4\r\n$1\r\nk\r\n:1\r\n$1\r\nb\r\n:1\r\n",
            b"%2\r\n$1\r\nk\r\n:1\r\n$1\r\nb\r\n#t\r\n",
        );
    }

    #[test]
    fn sets() {
        check(Frame::Set(vec![]), b"*0\r\n", b"~0\r\n");
        check(
            Frame::Set(vec![Frame::bulk("x"), Frame::bulk("yz")]),
            b"*2\r\n$1\r\nx\r\n$2\r\nyz\r\n",
            b"~2\r\n$1\r\nx\r\n$2\r\nyz\r\n",
        );
    }

    #[test]
    fn booleans() {
        check(Frame::Boolean(true), b":1\r\n", b"#t\r\n");
        check(Frame::Boolean(false), b":0\r\n", b"#f\r\n");
    }

    #[test]
    fn verbatim() {
        check(
            Frame::Verbatim(Bytes::from_static(b"# Server\r\nx:1")),
            b"$13\r\n# Server\r\nx:1\r\n",
            b"=17\r\ntxt:# Server\r\nx:1\r\n",
        );
        check(
            Frame::Verbatim(Bytes::new()),
            b"$0\r\n\r\n",
            b"=4\r\ntxt:\r\n",
        );
    }

    #[test]
    fn doubles_both_protocols() {
        check(Frame::Double(1.5), b"$3\r\n1.5\r\n", b",1.5\r\n");
        check(Frame::Double(f64::INFINITY), b"$3\r\ninf\r\n", b",inf\r\n");
        check(
            Frame::Double(f64::NEG_INFINITY),
            b"$4\r\n-inf\r\n",
            b",-inf\r\n",
        );
        check(Frame::Double(f64::NAN), b"$3\r\nnan\r\n", b",nan\r\n");
    }

    fn double_text(d: f64) -> String {
        String::from_utf8(enc(&Frame::Double(d), Protocol::Resp3))
            .unwrap()
            .trim_start_matches(',')
            .trim_end_matches("\r\n")
            .to_owned()
    }

    #[test]
    fn double_text_matches_redis() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "-0"),
            (1.0, "1"),
            (-3.0, "-3"),
            (10.0, "10"),
            (12.375, "12.375"),
            (-2.5, "-2.5"),
            (0.1, "0.1"),
            (0.001, "0.001"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (123.456, "123.456"),
            (1e20, "1e+20"),
            (1.5e300, "1.5e+300"),
            (-1e300, "-1e+300"),
            (4611686018427387904.0, "4611686018427387904"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::MIN_POSITIVE, "2.2250738585072014e-308"),
            (5e-324, "5e-324"),
        ];
        for &(d, want) in cases {
            assert_eq!(double_text(d), want, "{d:e}");
        }
    }

    proptest::proptest! {
        /// Every finite double's text parses back to the same value.
        #[test]
        fn double_text_round_trips(d in proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL) {
            let text = double_text(d);
            let parsed: f64 = text.parse().unwrap();
            proptest::prop_assert_eq!(parsed.to_bits(), d.to_bits(), "{}", text);
        }
    }
}
