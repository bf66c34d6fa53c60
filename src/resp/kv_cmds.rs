//! ringkv's own commands: `KV.GET`, `KV.PUT`, `KV.DEL` with per-request
//! consistency levels (and `SLOPPY` for writes), `KV.WHERE` and `KV.INSPECT`.
//!
//! Handlers run after the dispatcher checked arity.

use bytes::Bytes;

use super::command::{CmdError, Cx, Reply, is, parse_level};
use super::frame::Frame;
use super::string_cmds::ExpiryArg;
use crate::coordinator::{Consistency, ExpiryUpdate, SetCondition, Store, WriteCmd};
use crate::version::Payload;

/// Options of a KV command: levels and, for KV.PUT, an expiry.
struct KvOptions {
    consistency: Consistency,
    expiry: Option<u64>,
}

fn parse_options<S: Store>(
    cx: &Cx<'_, S>,
    args: &[Bytes],
    allow_expiry: bool,
    allow_sloppy: bool,
) -> Result<KvOptions, CmdError> {
    let mut options = KvOptions {
        consistency: cx.session.consistency,
        expiry: None,
    };
    let mut rest = args;
    loop {
        if let [flag, tail @ ..] = rest
            && allow_sloppy
            && is(flag, "SLOPPY")
        {
            options.consistency.sloppy = true;
            rest = tail;
            continue;
        }
        let [name, value, tail @ ..] = rest else {
            break;
        };
        if is(name, "R") {
            options.consistency.read = parse_level(value)?;
        } else if is(name, "W") {
            options.consistency.write = parse_level(value)?;
        } else if allow_expiry && options.expiry.is_none() && (is(name, "EX") || is(name, "PX")) {
            let unit = if is(name, "EX") {
                ExpiryArg::Seconds
            } else {
                ExpiryArg::Millis
            };
            let amount = super::command::parse_i64(value)?;
            if amount <= 0 {
                return Err(CmdError::invalid_expire("kv.put"));
            }
            let at = unit
                .absolute_ms(amount, cx.store().now_ms())
                .ok_or_else(|| CmdError::invalid_expire("kv.put"))?;
            options.expiry = Some(at);
        } else {
            return Err(CmdError::syntax());
        }
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(CmdError::syntax());
    }
    Ok(options)
}

pub(crate) async fn kv_get<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let key = cx.check_key(&args[1])?;
    let options = parse_options(cx, &args[2..], false, false)?;
    let entry = cx
        .store()
        .get(cx.session.keyspace, key, options.consistency)
        .await?;
    Ok(entry.map_or(Frame::Null, |e| Frame::Bulk(e.value)))
}

pub(crate) async fn kv_put<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let key = cx.check_key(&args[1])?;
    let value = cx.check_value(&args[2])?.clone();
    let options = parse_options(cx, &args[3..], true, true)?;
    let cmd = WriteCmd::Set {
        value,
        expiry: options.expiry.map_or(ExpiryUpdate::Clear, ExpiryUpdate::At),
        condition: SetCondition::Always,
    };
    cx.store()
        .write(cx.session.keyspace, key, cmd, options.consistency)
        .await?;
    Ok(Frame::ok())
}

pub(crate) async fn kv_del<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let key = cx.check_key(&args[1])?;
    let options = parse_options(cx, &args[2..], false, true)?;
    let outcome = cx
        .store()
        .write(
            cx.session.keyspace,
            key,
            WriteCmd::Delete,
            options.consistency,
        )
        .await?;
    Ok(Frame::Integer(i64::from(outcome.applied)))
}

pub(crate) fn kv_where<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let key = cx.check_key(&args[1])?;
    let placement = cx.store().placement(cx.session.keyspace, key)?;
    let names = |nodes: Vec<String>| {
        Frame::Array(nodes.into_iter().map(|n| Frame::Bulk(n.into())).collect())
    };
    let s = |text: &'static str| Frame::Bulk(Bytes::from_static(text.as_bytes()));
    Ok(Frame::Map(vec![
        (
            s("partition"),
            Frame::Integer(i64::from(placement.partition)),
        ),
        (s("primaries"), names(placement.primaries)),
        (s("fallbacks"), names(placement.fallbacks)),
    ]))
}

/// `KV.INSPECT key`: what each primary holds, one map per replica: `node`,
/// `state` (`value`, `expired`, `tombstone`, `missing` or `error`),
/// `digest` (xxh3-64 of the value, hex), `timestamp` (`microseconds.logical`),
/// `writer` (the node id in the version), `expiry_ms`, and `error`.
pub(crate) async fn kv_inspect<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let key = cx.check_key(&args[1])?;
    let now = cx.store().now_ms();
    let replicas = cx.store().inspect(cx.session.keyspace, key).await?;
    let s = |text: &'static str| Frame::Bulk(Bytes::from_static(text.as_bytes()));
    let text = |text: String| Frame::Bulk(text.into());
    let views = replicas
        .into_iter()
        .map(|replica| {
            let mut fields = vec![(s("node"), text(replica.node))];
            match replica.held {
                Err(why) => {
                    fields.push((s("state"), s("error")));
                    fields.push((s("error"), text(why)));
                }
                Ok(None) => fields.push((s("state"), s("missing"))),
                Ok(Some(record)) => {
                    let (state, digest) = match &record.payload {
                        Payload::Value(value) => (
                            if record.is_expired(now) {
                                "expired"
                            } else {
                                "value"
                            },
                            Frame::Bulk(
                                format!("{:016x}", xxhash_rust::xxh3::xxh3_64(value)).into(),
                            ),
                        ),
                        Payload::Tombstone => ("tombstone", Frame::Null),
                    };
                    let ts = record.version.timestamp;
                    fields.extend([
                        (s("state"), s(state)),
                        (s("digest"), digest),
                        (s("timestamp"), text(ts.to_string())),
                        (s("writer"), Frame::Integer(i64::from(record.version.node))),
                        (
                            s("expiry_ms"),
                            record
                                .expiry_ms
                                .map_or(Frame::Null, |ms| Frame::Integer(ms as i64)),
                        ),
                    ]);
                }
            }
            Frame::Map(fields)
        })
        .collect();
    Ok(Frame::Array(views))
}
