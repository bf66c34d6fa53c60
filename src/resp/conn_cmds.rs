//! Connection commands: PING, HELLO, AUTH, SELECT, QUIT, CLIENT, CONSISTENCY.
//!
//! They change only this connection's [`super::server::Session`].

use bytes::Bytes;

use super::command::{CmdError, Cx, Reply, is, parse_i64, parse_level};
use super::frame::{Frame, Protocol};
use crate::coordinator::{Consistency, Store};

pub(crate) fn ping(args: &[Bytes]) -> Reply {
    match args {
        [_] => Ok(Frame::Simple("PONG".into())),
        [_, msg] => Ok(Frame::Bulk(msg.clone())),
        _ => Err(CmdError(
            "ERR wrong number of arguments for 'ping' command".into(),
        )),
    }
}

fn check_password<S: Store>(
    cx: &mut Cx<'_, S>,
    user: &[u8],
    password: &[u8],
) -> Result<(), CmdError> {
    let Some(expected) = cx.shared.config.requirepass.as_deref() else {
        return Err(CmdError(
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"
                .into(),
        ));
    };
    // NOTE: compare in constant time so response timing does not leak the password.
    let same = expected.len() == password.len()
        && expected
            .bytes()
            .zip(password)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if user == b"default" && same {
        cx.session.authenticated = true;
        Ok(())
    } else {
        tracing::warn!(client = cx.session.id, "authentication failed");
        Err(CmdError(
            "WRONGPASS invalid username-password pair or user is disabled.".into(),
        ))
    }
}

pub(crate) fn auth<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    match args {
        [_, password] => check_password(cx, b"default", password)?,
        [_, user, password] => check_password(cx, user, password)?,
        _ => return Err(CmdError::syntax()),
    }
    Ok(Frame::ok())
}

pub(crate) fn hello<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let mut proto = cx.session.proto;
    let mut rest = args.get(1..).unwrap_or_default();
    if let [version, tail @ ..] = rest {
        proto = match parse_i64(version) {
            Ok(2) => Protocol::Resp2,
            Ok(3) => Protocol::Resp3,
            Ok(_) => return Err(CmdError("NOPROTO unsupported protocol version".into())),
            Err(_) => {
                return Err(CmdError(
                    "ERR Protocol version is not an integer or out of range".into(),
                ));
            }
        };
        rest = tail;
    }
    let mut name = None;
    while let [opt, tail @ ..] = rest {
        match tail {
            [user, password, more @ ..] if is(opt, "AUTH") => {
                check_password(cx, user, password)?;
                rest = more;
            }
            [client_name, more @ ..] if is(opt, "SETNAME") => {
                name = Some(client_name.clone());
                rest = more;
            }
            _ => {
                let shown = String::from_utf8_lossy(opt).into_owned();
                return Err(CmdError(
                    format!("ERR Syntax error in HELLO option '{shown}'").into(),
                ));
            }
        }
    }
    if !cx.session.authenticated {
        return Err(CmdError(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time"
                .into(),
        ));
    }
    cx.session.proto = proto;
    if name.is_some() {
        cx.session.name = name;
    }
    let s = |text: &'static str| Frame::Bulk(Bytes::from_static(text.as_bytes()));
    Ok(Frame::Map(vec![
        (s("server"), s("redis")),
        (s("version"), s(super::server_cmds::REDIS_COMPAT_VERSION)),
        (
            s("proto"),
            Frame::Integer(if proto == Protocol::Resp3 { 3 } else { 2 }),
        ),
        (s("id"), Frame::Integer(cx.session.id as i64)),
        (s("mode"), s("standalone")),
        (s("role"), s("master")),
        (s("modules"), Frame::Array(Vec::new())),
    ]))
}

pub(crate) fn select<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let name = std::str::from_utf8(&args[1]).unwrap_or_default();
    match cx.store().keyspaces().resolve(name) {
        Some(ks) => {
            cx.session.keyspace = ks;
            if !cx.session.levels_chosen {
                let config = cx.store().keyspaces().get(ks);
                cx.session.consistency = super::server::keyspace_levels(config);
            }
            Ok(Frame::ok())
        }
        None if name.parse::<i64>().is_ok() => Err(CmdError("ERR DB index is out of range".into())),
        None => Err(CmdError(
            format!("ERR unknown keyspace '{name}' (keyspaces are defined in the config file)")
                .into(),
        )),
    }
}

pub(crate) fn quit<S: Store>(cx: &mut Cx<'_, S>) -> Reply {
    cx.session.quit = true;
    Ok(Frame::ok())
}

pub(crate) fn client<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let sub = &args[1];
    let rest = &args[2..];
    match rest {
        [name] if is(sub, "SETNAME") => {
            if name.iter().any(|b| *b <= b' ' || *b > b'~') {
                return Err(CmdError(
                    "ERR Client names cannot contain spaces, newlines or special characters."
                        .into(),
                ));
            }
            cx.session.name = (!name.is_empty()).then(|| name.clone());
            Ok(Frame::ok())
        }
        [] if is(sub, "GETNAME") => Ok(cx.session.name.clone().map_or(Frame::Null, Frame::Bulk)),
        [] if is(sub, "ID") => Ok(Frame::Integer(cx.session.id as i64)),
        [_, _] if is(sub, "SETINFO") => Ok(Frame::ok()),
        [] if is(sub, "INFO") => Ok(Frame::Verbatim(cx.session.describe().into())),
        [] if is(sub, "LIST") => Ok(Frame::Verbatim(cx.shared.clients.list().into())),
        _ => {
            let shown = String::from_utf8_lossy(sub).into_owned();
            Err(CmdError(
                format!("ERR unknown subcommand or wrong number of arguments for '{shown}'. Try CLIENT HELP.")
                    .into(),
            ))
        }
    }
}

pub(crate) fn consistency<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let mut rest = &args[1..];
    let Consistency {
        mut read,
        mut write,
        mut sloppy,
    } = cx.session.consistency;
    while let [which, value, tail @ ..] = rest {
        if is(which, "READ") {
            read = parse_level(value)?;
        } else if is(which, "WRITE") {
            write = parse_level(value)?;
        } else if is(which, "SLOPPY") {
            sloppy = if is(value, "ON") {
                true
            } else if is(value, "OFF") {
                false
            } else {
                return Err(CmdError("ERR SLOPPY takes ON or OFF".into()));
            };
        } else {
            return Err(CmdError::syntax());
        }
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(CmdError::syntax());
    }
    let n = cx.store().replication(cx.session.keyspace);
    for level in [read, write] {
        if level.required(n) > n {
            return Err(CmdError(
                format!(
                    "ERR consistency level {level} needs {} replicas but this keyspace has n={n}",
                    level.required(n)
                )
                .into(),
            ));
        }
    }
    cx.session.consistency = Consistency {
        read,
        write,
        sloppy,
    };
    cx.session.levels_chosen |= args.len() > 1;
    let s = |text: &'static str| Frame::Bulk(Bytes::from_static(text.as_bytes()));
    Ok(Frame::Map(vec![
        (s("read"), Frame::Bulk(read.to_string().into())),
        (s("write"), Frame::Bulk(write.to_string().into())),
        (s("sloppy"), Frame::Bulk(s_on_off(sloppy))),
        (s("n"), Frame::Integer(i64::from(n))),
    ]))
}

fn s_on_off(on: bool) -> Bytes {
    Bytes::from_static(if on { b"on" } else { b"off" })
}
