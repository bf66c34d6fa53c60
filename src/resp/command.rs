//! The command table, argument helpers and dispatch.
//!
//! Invariant: arity and authentication are checked here, once, before any
//! handler runs, with Redis's error texts.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;

use super::frame::Frame;
use super::server::{Session, Shared};
use super::{conn_cmds, key_cmds, kv_cmds, server_cmds, string_cmds};
use crate::coordinator::{Level, Store, StoreError};
use crate::storage::StorageError;

/// An error reply (its text starts with the error code, e.g. `ERR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CmdError(pub Cow<'static, str>);

impl CmdError {
    pub(crate) fn syntax() -> Self {
        Self("ERR syntax error".into())
    }

    pub(crate) fn not_integer() -> Self {
        Self("ERR value is not an integer or out of range".into())
    }

    pub(crate) fn invalid_expire(cmd: &str) -> Self {
        Self(format!("ERR invalid expire time in '{cmd}' command").into())
    }
}

impl From<StoreError> for CmdError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(q) => {
                tracing::warn!(error = %q, "quorum not reached");
                Self(format!("UNAVAILABLE {q}").into())
            }
            StoreError::BadLevel(why) => Self(format!("ERR {why}").into()),
            // Redis refuses writes the same way after its AOF fsync failed.
            // NOTE: not logged per command: the failure was, once.
            StoreError::Storage(e @ StorageError::Fsync(_)) => Self(format!("MISCONF {e}").into()),
            other => {
                tracing::error!(error = %other, "store error");
                Self(format!("ERR {other}").into())
            }
        }
    }
}

pub(crate) type Reply = Result<Frame, CmdError>;

/// What a handler gets: the node's shared state and this connection's session.
pub(crate) struct Cx<'a, S: Store> {
    pub shared: &'a Arc<Shared<S>>,
    pub session: &'a mut Session,
}

impl<S: Store> Cx<'_, S> {
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// Checks a key against `max_key_bytes`.
    pub fn check_key<'k>(&self, key: &'k Bytes) -> Result<&'k Bytes, CmdError> {
        let max = self.shared.config.max_key_bytes;
        if key.is_empty() {
            return Err(CmdError("ERR empty keys are not allowed".into()));
        }
        if key.len() > max {
            return Err(CmdError(
                format!(
                    "ERR key too large ({} bytes; max_key_bytes is {max})",
                    key.len()
                )
                .into(),
            ));
        }
        Ok(key)
    }

    /// Checks a value against `max_value_bytes`.
    pub fn check_value<'v>(&self, value: &'v Bytes) -> Result<&'v Bytes, CmdError> {
        let max = self.shared.config.max_value_bytes;
        if value.len() > max {
            return Err(CmdError(
                format!(
                    "ERR value too large ({} bytes; max_value_bytes is {max})",
                    value.len()
                )
                .into(),
            ));
        }
        Ok(value)
    }
}

/// Parses a base-10 signed integer argument the way Redis does.
pub(crate) fn parse_i64(arg: &[u8]) -> Result<i64, CmdError> {
    std::str::from_utf8(arg)
        .ok()
        .filter(|s| {
            let leading_zero = s.len() > 1 && s.starts_with('0');
            !s.starts_with('+') && !leading_zero && !s.starts_with("-0")
        })
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(CmdError::not_integer)
}

/// Parses a consistency level argument (`one|two|quorum|all|<integer>`).
pub(crate) fn parse_level(arg: &[u8]) -> Result<Level, CmdError> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(Level::parse)
        .ok_or_else(|| {
            CmdError(
                "ERR invalid consistency level: use one, two, quorum, all or a positive integer"
                    .into(),
            )
        })
}

/// True if `arg` equals `word`, ignoring ASCII case.
pub(crate) fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

macro_rules! commands {
    ($( $variant:ident => $name:literal, $arity:expr, $flags:expr; )*) => {
        /// Every command ringkv knows.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Cmd { $( #[doc = $name] $variant, )* }

        impl Cmd {
            /// All commands, in table order.
            pub const ALL: &'static [Cmd] = &[$(Cmd::$variant,)*];

            /// Lower-case name.
            pub fn name(self) -> &'static str {
                match self { $(Cmd::$variant => $name,)* }
            }

            /// Redis arity: `n` exactly n arguments (name included), `-n` at least n.
            pub fn arity(self) -> i32 {
                match self { $(Cmd::$variant => $arity,)* }
            }

            pub(crate) fn flags(self) -> &'static [&'static str] {
                match self { $(Cmd::$variant => $flags,)* }
            }

            /// Looks a command name up, ignoring case.
            pub fn lookup(name: &[u8]) -> Option<Cmd> {
                let mut buf = [0u8; 16];
                let lower = buf.get_mut(..name.len())?;
                lower.copy_from_slice(name);
                lower.make_ascii_lowercase();
                // NOTE: the table is searched in order (a compare per name):
                // GET and SET, most of any workload, skip it.
                match &*lower {
                    b"get" => return Some(Cmd::Get),
                    b"set" => return Some(Cmd::Set),
                    _ => {}
                }
                match &*lower {
                    $( n if n == $name.as_bytes() => Some(Cmd::$variant), )*
                    _ => None,
                }
            }
        }
    };
}

const R: &[&str] = &["readonly", "fast"];
const W: &[&str] = &["write", "denyoom"];
const C: &[&str] = &["fast", "loading", "stale"];
const A: &[&str] = &["noauth", "fast", "loading", "stale"];

commands! {
    Ping => "ping", -1, C;
    Echo => "echo", 2, C;
    Hello => "hello", -1, A;
    Auth => "auth", -2, A;
    Select => "select", 2, C;
    Quit => "quit", -1, A;
    Client => "client", -2, C;
    Consistency => "consistency", -1, C;
    Get => "get", 2, R;
    Set => "set", -3, W;
    Setex => "setex", 4, W;
    Psetex => "psetex", 4, W;
    Setnx => "setnx", 3, W;
    Getdel => "getdel", 2, W;
    Getex => "getex", -2, W;
    Mget => "mget", -2, R;
    Mset => "mset", -3, W;
    Strlen => "strlen", 2, R;
    Del => "del", -2, W;
    Unlink => "unlink", -2, W;
    Exists => "exists", -2, R;
    Expire => "expire", -3, W;
    Pexpire => "pexpire", -3, W;
    Expireat => "expireat", -3, W;
    Pexpireat => "pexpireat", -3, W;
    Expiretime => "expiretime", 2, R;
    Pexpiretime => "pexpiretime", 2, R;
    Ttl => "ttl", 2, R;
    Pttl => "pttl", 2, R;
    Persist => "persist", 2, W;
    Type => "type", 2, R;
    Dbsize => "dbsize", 1, R;
    Info => "info", -1, C;
    Command => "command", -1, C;
    Config => "config", -2, C;
    KvGet => "kv.get", -2, R;
    KvPut => "kv.put", -3, W;
    KvDel => "kv.del", -2, W;
    KvWhere => "kv.where", 2, R;
    KvInspect => "kv.inspect", 2, R;
}

impl Cmd {
    /// True for commands that may change data (they trigger a commit).
    pub fn is_write(self) -> bool {
        self.flags().contains(&"write")
    }

    fn allowed_before_auth(self) -> bool {
        self.flags().contains(&"noauth")
    }
}

fn arity_ok(cmd: Cmd, argc: usize) -> bool {
    let arity = cmd.arity();
    let argc = argc as i64;
    if arity >= 0 {
        argc == i64::from(arity)
    } else {
        argc >= -i64::from(arity)
    }
}

fn unknown_command(args: &[Bytes]) -> Frame {
    let show = |b: &Bytes| String::from_utf8_lossy(&b[..b.len().min(128)]).into_owned();
    let name = args.first().map(show).unwrap_or_default();
    let rest: String = args
        .iter()
        .skip(1)
        .take(16)
        .map(|a| format!("'{}' ", show(a)))
        .collect();
    Frame::error(format!(
        "ERR unknown command '{name}', with args beginning with: {rest}"
    ))
}

/// Runs one command. `args[0]` is the command name; `args` is never empty.
pub(crate) async fn dispatch<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> (Option<Cmd>, Frame) {
    let Some(cmd) = args.first().and_then(|n| Cmd::lookup(n)) else {
        return (None, unknown_command(args));
    };
    if !cx.session.authenticated && !cmd.allowed_before_auth() {
        return (Some(cmd), Frame::error("NOAUTH Authentication required."));
    }
    if !arity_ok(cmd, args.len()) {
        let msg = format!("ERR wrong number of arguments for '{}' command", cmd.name());
        return (Some(cmd), Frame::error(msg));
    }
    let reply = run(cmd, cx, args).await;
    (Some(cmd), reply.unwrap_or_else(|e| Frame::Error(e.0)))
}

async fn run<S: Store>(cmd: Cmd, cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    use Cmd::*;
    match cmd {
        Ping => conn_cmds::ping(args),
        Echo => Ok(Frame::Bulk(args[1].clone())),
        Hello => conn_cmds::hello(cx, args),
        Auth => conn_cmds::auth(cx, args),
        Select => conn_cmds::select(cx, args),
        Quit => conn_cmds::quit(cx),
        Client => conn_cmds::client(cx, args),
        Consistency => conn_cmds::consistency(cx, args),
        Get => string_cmds::get(cx, args).await,
        Set => string_cmds::set(cx, args).await,
        Setex | Psetex => string_cmds::setex(cx, cmd, args).await,
        Setnx => string_cmds::setnx(cx, args).await,
        Getdel => string_cmds::getdel(cx, args).await,
        Getex => string_cmds::getex(cx, args).await,
        Mget => string_cmds::mget(cx, args).await,
        Mset => string_cmds::mset(cx, args).await,
        Strlen => string_cmds::strlen(cx, args).await,
        Del | Unlink => key_cmds::del(cx, args).await,
        Exists => key_cmds::exists(cx, args).await,
        Expire | Pexpire | Expireat | Pexpireat => key_cmds::expire(cx, cmd, args).await,
        Expiretime | Pexpiretime | Ttl | Pttl => key_cmds::ttl(cx, cmd, args).await,
        Persist => key_cmds::persist(cx, args).await,
        Type => key_cmds::key_type(cx, args).await,
        Dbsize => Ok(Frame::Integer(
            cx.store().dbsize(cx.session.keyspace).await? as i64,
        )),
        Info => server_cmds::info(cx, args),
        Command => server_cmds::command(args),
        Config => server_cmds::config(cx, args),
        KvGet => kv_cmds::kv_get(cx, args).await,
        KvPut => kv_cmds::kv_put(cx, args).await,
        KvDel => kv_cmds::kv_del(cx, args).await,
        KvWhere => kv_cmds::kv_where(cx, args),
        KvInspect => kv_cmds::kv_inspect(cx, args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_journal_fsync_is_a_misconf_error_as_in_redis() {
        let e = StoreError::Storage(StorageError::Fsync("fsync of /d/3.jnl: EIO".into()));
        let CmdError(reply) = CmdError::from(e);
        assert!(reply.starts_with("MISCONF journal fsync failed"), "{reply}");
        assert!(reply.contains("/d/3.jnl: EIO"), "{reply}");
    }

    #[test]
    fn lookup_ignores_case_and_rejects_long_names() {
        assert_eq!(Cmd::lookup(b"GeT"), Some(Cmd::Get));
        assert_eq!(Cmd::lookup(b"pexpiretime"), Some(Cmd::Pexpiretime));
        assert_eq!(Cmd::lookup(b"nope"), None);
        assert_eq!(Cmd::lookup(&[b'a'; 100]), None);
        assert_eq!(Cmd::lookup(b""), None);
    }

    #[test]
    fn parse_i64_is_strict_like_redis() {
        assert_eq!(parse_i64(b"42"), Ok(42));
        assert_eq!(parse_i64(b"-7"), Ok(-7));
        assert_eq!(parse_i64(b"0"), Ok(0));
        for bad in [
            &b"+1"[..],
            b"01",
            b"1.5",
            b"",
            b" 1",
            b"-0",
            b"99999999999999999999",
        ] {
            assert!(parse_i64(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn arity_rules() {
        assert!(arity_ok(Cmd::Get, 2));
        assert!(!arity_ok(Cmd::Get, 3));
        assert!(arity_ok(Cmd::Set, 5));
        assert!(!arity_ok(Cmd::Set, 2));
    }
}
