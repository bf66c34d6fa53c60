//! ringkv's own commands: `KV.GET`, `KV.PUT`, `KV.DEL` with per-request
//! consistency levels, and `KV.WHERE`.
//!
//! Handlers run after the dispatcher checked arity.

use bytes::Bytes;

use super::command::{CmdError, Cx, Reply, is, parse_level};
use super::frame::Frame;
use super::string_cmds::ExpiryArg;
use crate::coordinator::{Consistency, ExpiryUpdate, SetCondition, Store, WriteCmd};

/// Options of a KV command: levels and, for KV.PUT, an expiry.
struct KvOptions {
    consistency: Consistency,
    expiry: Option<u64>,
}

fn parse_options<S: Store>(
    cx: &Cx<'_, S>,
    args: &[Bytes],
    allow_expiry: bool,
) -> Result<KvOptions, CmdError> {
    let mut options = KvOptions {
        consistency: cx.session.consistency,
        expiry: None,
    };
    let mut rest = args;
    while let [name, value, tail @ ..] = rest {
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
    let options = parse_options(cx, &args[2..], false)?;
    let entry = cx
        .store()
        .get(cx.session.keyspace, key, options.consistency)
        .await?;
    Ok(entry.map_or(Frame::Null, |e| Frame::Bulk(e.value)))
}

pub(crate) async fn kv_put<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let key = cx.check_key(&args[1])?;
    let value = cx.check_value(&args[2])?.clone();
    let options = parse_options(cx, &args[3..], true)?;
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
    let options = parse_options(cx, &args[2..], false)?;
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
