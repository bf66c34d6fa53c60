//! Key commands: DEL, UNLINK, EXISTS, the EXPIRE family, TTL family, PERSIST, TYPE.
//!
//! Handlers run after the dispatcher checked arity.

use bytes::Bytes;
use futures_util::future::try_join_all;

use super::Cmd;
use super::command::{CmdError, Cx, Reply, is, parse_i64};
use super::frame::Frame;
use super::string_cmds::ExpiryArg;
use crate::coordinator::{ExpireCondition, Store, WriteCmd};

pub(crate) async fn del<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let mut keys: Vec<&Bytes> = Vec::with_capacity(args.len() - 1);
    let mut seen = std::collections::HashSet::with_capacity(args.len() - 1);
    for key in &args[1..] {
        cx.check_key(key)?;
        // NOTE: a key named twice is deleted (and counted) once, as in Redis.
        if seen.insert(key) {
            keys.push(key);
        }
    }
    let (store, ks, levels) = (cx.store(), cx.session.keyspace, cx.session.consistency);
    let outcomes = try_join_all(
        keys.iter()
            .map(|key| store.write(ks, key, WriteCmd::Delete, levels)),
    )
    .await?;
    Ok(Frame::Integer(
        outcomes.iter().map(|o| i64::from(o.applied)).sum(),
    ))
}

pub(crate) async fn exists<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let keys = &args[1..];
    for key in keys {
        cx.check_key(key)?;
    }
    let (store, ks, levels) = (cx.store(), cx.session.keyspace, cx.session.consistency);
    let entries = try_join_all(keys.iter().map(|key| store.get(ks, key, levels))).await?;
    Ok(Frame::Integer(
        entries.iter().filter(|e| e.is_some()).count() as i64,
    ))
}

fn expire_condition(options: &[Bytes]) -> Result<ExpireCondition, CmdError> {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in options {
        match () {
            _ if is(opt, "NX") => nx = true,
            _ if is(opt, "XX") => xx = true,
            _ if is(opt, "GT") => gt = true,
            _ if is(opt, "LT") => lt = true,
            _ => {
                let shown = String::from_utf8_lossy(opt).into_owned();
                return Err(CmdError(format!("ERR Unsupported option {shown}").into()));
            }
        }
    }
    if nx && (xx || gt || lt) {
        return Err(CmdError(
            "ERR NX and XX, GT or LT options at the same time are not compatible".into(),
        ));
    }
    if gt && lt {
        return Err(CmdError(
            "ERR GT and LT options at the same time are not compatible".into(),
        ));
    }
    Ok(match (nx, xx, gt, lt) {
        (true, ..) => ExpireCondition::IfNone,
        (_, _, true, _) => ExpireCondition::Later,
        (_, _, _, true) => ExpireCondition::Sooner,
        (_, true, ..) => ExpireCondition::IfSome,
        _ => ExpireCondition::Always,
    })
}

pub(crate) async fn expire<S: Store>(cx: &mut Cx<'_, S>, cmd: Cmd, args: &[Bytes]) -> Reply {
    let key = cx.check_key(&args[1])?;
    let amount = parse_i64(&args[2])?;
    let condition = expire_condition(&args[3..])?;
    let unit = match cmd {
        Cmd::Expire => ExpiryArg::Seconds,
        Cmd::Pexpire => ExpiryArg::Millis,
        Cmd::Expireat => ExpiryArg::UnixSeconds,
        _ => ExpiryArg::UnixMillis,
    };
    let at = unit
        .absolute_ms(amount, cx.store().now_ms())
        .ok_or_else(|| CmdError::invalid_expire(cmd.name()))?;
    let write = WriteCmd::Expire {
        at_ms: Some(at),
        condition,
    };
    let outcome = cx
        .store()
        .write(cx.session.keyspace, key, write, cx.session.consistency)
        .await?;
    Ok(Frame::Integer(i64::from(outcome.applied)))
}

pub(crate) async fn ttl<S: Store>(cx: &mut Cx<'_, S>, cmd: Cmd, args: &[Bytes]) -> Reply {
    let key = cx.check_key(&args[1])?;
    let now = cx.store().now_ms();
    let Some(entry) = cx
        .store()
        .get(cx.session.keyspace, key, cx.session.consistency)
        .await?
    else {
        return Ok(Frame::Integer(-2));
    };
    let Some(at) = entry.expiry_ms else {
        return Ok(Frame::Integer(-1));
    };
    let remaining = at.saturating_sub(now) as i64;
    Ok(Frame::Integer(match cmd {
        Cmd::Ttl => (remaining + 500) / 1000,
        Cmd::Pttl => remaining,
        Cmd::Expiretime => (at / 1000) as i64,
        _ => at as i64,
    }))
}

pub(crate) async fn persist<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let key = cx.check_key(&args[1])?;
    let write = WriteCmd::Expire {
        at_ms: None,
        condition: ExpireCondition::Always,
    };
    let outcome = cx
        .store()
        .write(cx.session.keyspace, key, write, cx.session.consistency)
        .await?;
    Ok(Frame::Integer(i64::from(outcome.applied)))
}

pub(crate) async fn key_type<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let key = cx.check_key(&args[1])?;
    let found = cx
        .store()
        .get(cx.session.keyspace, key, cx.session.consistency)
        .await?
        .is_some();
    Ok(Frame::Simple(if found { "string" } else { "none" }.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(words: &[&str]) -> Result<ExpireCondition, CmdError> {
        let args: Vec<Bytes> = words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect();
        expire_condition(&args)
    }

    #[test]
    fn expire_options() {
        assert_eq!(cond(&[]), Ok(ExpireCondition::Always));
        assert_eq!(cond(&["nx"]), Ok(ExpireCondition::IfNone));
        assert_eq!(cond(&["XX", "GT"]), Ok(ExpireCondition::Later));
        assert!(
            cond(&["NX", "GT"])
                .unwrap_err()
                .0
                .contains("not compatible")
        );
        assert!(cond(&["GT", "LT"]).unwrap_err().0.contains("GT and LT"));
        assert!(
            cond(&["FOO"])
                .unwrap_err()
                .0
                .contains("Unsupported option FOO")
        );
    }
}
