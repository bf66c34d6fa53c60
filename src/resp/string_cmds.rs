//! String commands: GET, SET and its variants, GETDEL, GETEX, MGET, MSET, STRLEN.
//!
//! Handlers run after the dispatcher checked arity, so the fixed argument
//! positions they index exist.

use bytes::Bytes;

use super::Cmd;
use super::command::{CmdError, Cx, Reply, is, parse_i64};
use super::frame::Frame;
use crate::coordinator::{ExpireCondition, ExpiryUpdate, SetCondition, Store, WriteCmd};

/// The unit of an expiry argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExpiryArg {
    /// EX / EXPIRE: seconds from now.
    Seconds,
    /// PX / PEXPIRE: ms from now.
    Millis,
    /// EXAT / EXPIREAT: unix seconds.
    UnixSeconds,
    /// PXAT / PEXPIREAT: unix ms.
    UnixMillis,
}

impl ExpiryArg {
    fn from_option(arg: &[u8]) -> Option<Self> {
        [
            ("EX", Self::Seconds),
            ("PX", Self::Millis),
            ("EXAT", Self::UnixSeconds),
            ("PXAT", Self::UnixMillis),
        ]
        .into_iter()
        .find(|(word, _)| is(arg, word))
        .map(|(_, unit)| unit)
    }

    /// The absolute expiry in ms, or `None` when the arithmetic overflows.
    /// Negative results clamp to 0 (already expired).
    pub(crate) fn absolute_ms(self, amount: i64, now_ms: u64) -> Option<u64> {
        let now = i64::try_from(now_ms).ok()?;
        let at = match self {
            Self::Seconds => amount.checked_mul(1000)?.checked_add(now)?,
            Self::Millis => amount.checked_add(now)?,
            Self::UnixSeconds => amount.checked_mul(1000)?,
            Self::UnixMillis => amount,
        };
        Some(at.max(0) as u64)
    }
}

/// Parses the amount of a SET/GETEX/SETEX expiry, which must be positive.
fn positive_expiry(unit: ExpiryArg, arg: &[u8], now_ms: u64, cmd: &str) -> Result<u64, CmdError> {
    let amount = parse_i64(arg)?;
    if amount <= 0 {
        return Err(CmdError::invalid_expire(cmd));
    }
    unit.absolute_ms(amount, now_ms)
        .ok_or_else(|| CmdError::invalid_expire(cmd))
}

/// The expiry a write gets when the client named none.
fn default_expiry<S: Store>(cx: &Cx<'_, S>) -> ExpiryUpdate {
    let ttl = cx
        .store()
        .keyspaces()
        .get(cx.session.keyspace)
        .default_ttl_secs;
    if ttl == 0 {
        ExpiryUpdate::Clear
    } else {
        ExpiryUpdate::At(cx.store().now_ms().saturating_add(ttl.saturating_mul(1000)))
    }
}

fn bulk_or_null(value: Option<Bytes>) -> Frame {
    value.map_or(Frame::Null, Frame::Bulk)
}

pub(crate) async fn get<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let key = cx.check_key(&args[1])?;
    let entry = cx
        .store()
        .get(cx.session.keyspace, key, cx.session.consistency)
        .await?;
    Ok(bulk_or_null(entry.map(|e| e.value)))
}

/// The replies of a pipelined run of plain `GET key`s, in request order,
/// each as [`get`] answers it: the keys are read together
/// ([`Store::get_many`]: a cluster sends the reads that go to one replica
/// as one request).
pub(crate) async fn get_run<S: Store>(cx: &mut Cx<'_, S>, commands: &[Vec<Bytes>]) -> Vec<Frame> {
    let checked: Vec<Result<Bytes, CmdError>> = commands
        .iter()
        .map(|args| cx.check_key(&args[1]).cloned())
        .collect();
    let keys: Vec<Bytes> = checked.iter().filter_map(|key| key.clone().ok()).collect();
    let mut entries = cx
        .store()
        .get_many(cx.session.keyspace, &keys, cx.session.consistency)
        .await
        .into_iter();
    checked
        .into_iter()
        .map(|key| match key {
            Err(e) => Frame::Error(e.0),
            // NOTE: get_many answers every key it was given, in order.
            Ok(_) => match entries.next().expect("an entry per key") {
                Ok(entry) => bulk_or_null(entry.map(|e| e.value)),
                Err(e) => Frame::Error(CmdError::from(e).0),
            },
        })
        .collect()
}

/// The replies of a pipelined run of plain `SET key value`s, in request
/// order, each as [`set`] answers it: the writes are stamped in order and
/// go together ([`Store::write_many`]: a cluster sends the replica writes
/// that go to one node as one request).
pub(crate) async fn set_run<S: Store>(cx: &mut Cx<'_, S>, commands: &[Vec<Bytes>]) -> Vec<Frame> {
    let expiry = default_expiry(cx);
    let checked: Vec<Result<(Bytes, WriteCmd), CmdError>> = commands
        .iter()
        .map(|args| {
            let key = cx.check_key(&args[1])?.clone();
            let value = cx.check_value(&args[2])?.clone();
            let condition = SetCondition::Always;
            Ok((
                key,
                WriteCmd::Set {
                    value,
                    expiry,
                    condition,
                },
            ))
        })
        .collect();
    let writes = checked.iter().filter_map(|w| w.clone().ok()).collect();
    let mut outcomes = cx
        .store()
        .write_many(cx.session.keyspace, writes, cx.session.consistency)
        .await
        .into_iter();
    checked
        .into_iter()
        .map(|write| match write {
            Err(e) => Frame::Error(e.0),
            // NOTE: write_many answers every write it was given, in order.
            Ok(_) => match outcomes.next().expect("an outcome per write") {
                Ok(outcome) if outcome.applied => Frame::ok(),
                Ok(_) => Frame::Null,
                Err(e) => Frame::Error(CmdError::from(e).0),
            },
        })
        .collect()
}

struct SetArgs {
    condition: SetCondition,
    expiry: Option<ExpiryUpdate>,
    get: bool,
}

fn parse_set_options(options: &[Bytes], now_ms: u64) -> Result<SetArgs, CmdError> {
    let mut parsed = SetArgs {
        condition: SetCondition::Always,
        expiry: None,
        get: false,
    };
    let mut i = 0;
    while let Some(opt) = options.get(i) {
        if is(opt, "NX") && parsed.condition == SetCondition::Always {
            parsed.condition = SetCondition::IfAbsent;
        } else if is(opt, "XX") && parsed.condition == SetCondition::Always {
            parsed.condition = SetCondition::IfPresent;
        } else if is(opt, "GET") && !parsed.get {
            parsed.get = true;
        } else if is(opt, "KEEPTTL") && parsed.expiry.is_none() {
            parsed.expiry = Some(ExpiryUpdate::Keep);
        } else if let Some(unit) = ExpiryArg::from_option(opt).filter(|_| parsed.expiry.is_none()) {
            let amount = options.get(i + 1).ok_or_else(CmdError::syntax)?;
            parsed.expiry = Some(ExpiryUpdate::At(positive_expiry(
                unit, amount, now_ms, "set",
            )?));
            i += 1;
        } else {
            return Err(CmdError::syntax());
        }
        i += 1;
    }
    Ok(parsed)
}

pub(crate) async fn set<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let key = cx.check_key(&args[1])?;
    let value = cx.check_value(&args[2])?.clone();
    let options = &args[3..];
    let now = if options.is_empty() {
        0
    } else {
        cx.store().now_ms()
    };
    let opts = parse_set_options(options, now)?;
    let expiry = opts.expiry.unwrap_or_else(|| default_expiry(cx));
    let cmd = WriteCmd::Set {
        value,
        expiry,
        condition: opts.condition,
    };
    let outcome = cx
        .store()
        .write(cx.session.keyspace, key, cmd, cx.session.consistency)
        .await?;
    Ok(match (opts.get, outcome.applied) {
        (true, _) => bulk_or_null(outcome.previous.map(|e| e.value)),
        (false, true) => Frame::ok(),
        (false, false) => Frame::Null,
    })
}

pub(crate) async fn setex<S: Store>(cx: &mut Cx<'_, S>, cmd: Cmd, args: &[Bytes]) -> Reply {
    let key = cx.check_key(&args[1])?;
    let value = cx.check_value(&args[3])?.clone();
    let unit = if cmd == Cmd::Setex {
        ExpiryArg::Seconds
    } else {
        ExpiryArg::Millis
    };
    let at = positive_expiry(unit, &args[2], cx.store().now_ms(), cmd.name())?;
    let write = WriteCmd::Set {
        value,
        expiry: ExpiryUpdate::At(at),
        condition: SetCondition::Always,
    };
    cx.store()
        .write(cx.session.keyspace, key, write, cx.session.consistency)
        .await?;
    Ok(Frame::ok())
}

pub(crate) async fn setnx<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let key = cx.check_key(&args[1])?;
    let value = cx.check_value(&args[2])?.clone();
    let write = WriteCmd::Set {
        value,
        expiry: default_expiry(cx),
        condition: SetCondition::IfAbsent,
    };
    let outcome = cx
        .store()
        .write(cx.session.keyspace, key, write, cx.session.consistency)
        .await?;
    Ok(Frame::Integer(i64::from(outcome.applied)))
}

pub(crate) async fn getdel<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let key = cx.check_key(&args[1])?;
    let outcome = cx
        .store()
        .write(
            cx.session.keyspace,
            key,
            WriteCmd::Delete,
            cx.session.consistency,
        )
        .await?;
    Ok(bulk_or_null(outcome.previous.map(|e| e.value)))
}

pub(crate) async fn getex<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let key = cx.check_key(&args[1])?;
    let now = cx.store().now_ms();
    let at_ms = match &args[2..] {
        [] => return get(cx, args).await,
        [opt] if is(opt, "PERSIST") => None,
        [opt, amount] => {
            let unit = ExpiryArg::from_option(opt).ok_or_else(CmdError::syntax)?;
            Some(positive_expiry(unit, amount, now, "getex")?)
        }
        _ => return Err(CmdError::syntax()),
    };
    let write = WriteCmd::Expire {
        at_ms,
        condition: ExpireCondition::Always,
    };
    let outcome = cx
        .store()
        .write(cx.session.keyspace, key, write, cx.session.consistency)
        .await?;
    Ok(bulk_or_null(outcome.previous.map(|e| e.value)))
}

pub(crate) async fn mget<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let keys = &args[1..];
    for key in keys {
        cx.check_key(key)?;
    }
    // NOTE: all keys at once: in a cluster the reads that go to one
    // replica travel as one request.
    let (store, ks, levels) = (cx.store(), cx.session.keyspace, cx.session.consistency);
    let mut replies = Vec::with_capacity(keys.len());
    for entry in store.get_many(ks, keys, levels).await {
        replies.push(bulk_or_null(entry?.map(|e| e.value)));
    }
    Ok(Frame::Array(replies))
}

pub(crate) async fn mset<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let pairs = &args[1..];
    if !pairs.len().is_multiple_of(2) {
        return Err(CmdError(
            "ERR wrong number of arguments for 'mset' command".into(),
        ));
    }
    // NOTE: validate every pair before writing any, so a bad pair writes nothing.
    for pair in pairs.chunks_exact(2) {
        cx.check_key(&pair[0])?;
        cx.check_value(&pair[1])?;
    }
    let expiry = default_expiry(cx);
    let (store, ks, levels) = (cx.store(), cx.session.keyspace, cx.session.consistency);
    // NOTE: writes are stamped in argument order, so a key given twice ends
    // with its last value, as in Redis.
    let writes = pairs
        .chunks_exact(2)
        .map(|pair| {
            let write = WriteCmd::Set {
                value: pair[1].clone(),
                expiry,
                condition: SetCondition::Always,
            };
            (pair[0].clone(), write)
        })
        .collect();
    for outcome in store.write_many(ks, writes, levels).await {
        outcome?;
    }
    Ok(Frame::ok())
}

pub(crate) async fn strlen<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let key = cx.check_key(&args[1])?;
    let entry = cx
        .store()
        .get(cx.session.keyspace, key, cx.session.consistency)
        .await?;
    Ok(Frame::Integer(entry.map_or(0, |e| e.value.len() as i64)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(words: &[&str]) -> Result<SetArgs, CmdError> {
        let args: Vec<Bytes> = words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect();
        parse_set_options(&args, 1_000)
    }

    #[test]
    fn set_options_parse_like_redis() {
        let o = opts(&["nx", "get", "ex", "10"]).unwrap();
        assert_eq!(o.condition, SetCondition::IfAbsent);
        assert!(o.get);
        assert_eq!(o.expiry, Some(ExpiryUpdate::At(11_000)));
        assert_eq!(
            opts(&["PXAT", "5"]).unwrap().expiry,
            Some(ExpiryUpdate::At(5))
        );
        assert_eq!(opts(&["KEEPTTL"]).unwrap().expiry, Some(ExpiryUpdate::Keep));
    }

    #[test]
    fn set_option_errors() {
        assert_eq!(opts(&["NX", "XX"]).err(), Some(CmdError::syntax()));
        assert_eq!(
            opts(&["EX", "1", "PX", "1"]).err(),
            Some(CmdError::syntax())
        );
        assert_eq!(opts(&["EX"]).err(), Some(CmdError::syntax()));
        assert_eq!(
            opts(&["EX", "0"]).err(),
            Some(CmdError::invalid_expire("set"))
        );
        assert_eq!(opts(&["EX", "x"]).err(), Some(CmdError::not_integer()));
        assert_eq!(
            opts(&["EX", "9223372036854775807"]).err(),
            Some(CmdError::invalid_expire("set"))
        );
        assert_eq!(opts(&["BOGUS"]).err(), Some(CmdError::syntax()));
    }
}
