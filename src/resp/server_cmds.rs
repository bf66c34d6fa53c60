//! Server commands: INFO, COMMAND, CONFIG GET.
//!
//! They report what redis-cli, redis-benchmark and client libraries ask for.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::Cmd;
use super::command::{CmdError, Cx, Reply, is};
use super::frame::Frame;
use crate::config::FsyncPolicy;
use crate::coordinator::{ClusterStats, Store, StoreStats};

/// The Redis version ringkv's command set corresponds to (clients check it).
pub(crate) const REDIS_COMPAT_VERSION: &str = "7.2.0";

fn info_text<S: Store>(cx: &Cx<'_, S>, section: &str) -> String {
    let shared = cx.shared;
    let stats = cx.store().stats();
    let mut out = String::new();
    let want = |name: &str| {
        section.is_empty()
            || section == "all"
            || section == "everything"
            || section == "default"
            || section == name
    };
    if want("server") {
        let _ = write!(
            out,
            "# Server\r\nredis_version:{REDIS_COMPAT_VERSION}\r\nringkv_version:{}\r\nredis_mode:standalone\r\nnode_name:{}\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            shared.config.node_name,
            std::process::id(),
            shared.config.addr.port(),
            shared.started.elapsed().as_secs(),
        );
    }
    if want("clients") {
        let _ = write!(
            out,
            "# Clients\r\nconnected_clients:{}\r\nmaxclients:{}\r\n\r\n",
            shared.clients.count(),
            shared.config.max_connections
        );
    }
    if want("persistence") {
        persistence_section(&mut out, &stats, shared.config.fsync);
    }
    if want("stats") {
        let _ = write!(
            out,
            "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\nrejected_connections:{}\r\n\r\n",
            shared.total_connections.load(Ordering::Relaxed),
            shared.total_commands.load(Ordering::Relaxed),
            shared.rejected_connections.load(Ordering::Relaxed),
        );
    }
    if want("keyspace") {
        out.push_str("# Keyspace\r\n");
        for (i, (ks, keys)) in cx.store().keyspaces().iter().zip(&stats.keys).enumerate() {
            if *keys > 0 {
                let _ = write!(
                    out,
                    "db{i}:keys={keys},expires=0,avg_ttl=0,name={}\r\n",
                    ks.name
                );
            }
        }
        out.push_str("\r\n");
    }
    if want("cluster") {
        cluster_section(&mut out, stats.cluster.as_ref());
    }
    out
}

/// `# Persistence`, with `aof_last_write_status` (`ok`, or `err` once a
/// journal fsync failed and writes are refused), the field Redis monitoring
/// reads, then the error on one line.
fn persistence_section(out: &mut String, stats: &StoreStats, fsync: FsyncPolicy) {
    let _ = write!(
        out,
        "# Persistence\r\nloading:0\r\nengine:{}\r\nengine_bytes:{}\r\nappendfsync:{}\r\naof_last_write_status:{}\r\n",
        stats.engine,
        stats.engine_bytes,
        fsync_name(fsync),
        if stats.write_error.is_some() {
            "err"
        } else {
            "ok"
        },
    );
    if let Some(why) = &stats.write_error {
        // NOTE: one line, and no comma (redis-py splits a value at commas).
        let _ = write!(
            out,
            "write_error:{}\r\n",
            why.replace(['\r', '\n', ','], " ")
        );
    }
    out.push_str("\r\n");
}

/// `# Cluster`: `cluster_enabled` as Redis reports it, then what a ringkv
/// operator checks first: who is up, the layout, hints waiting.
fn cluster_section(out: &mut String, cluster: Option<&ClusterStats>) {
    let Some(c) = cluster else {
        out.push_str("# Cluster\r\ncluster_enabled:0\r\n\r\n");
        return;
    };
    let _ = write!(
        out,
        "# Cluster\r\ncluster_enabled:1\r\ncluster_nodes:{}\r\ncluster_nodes_up:{}\r\nlayout_version:{}\r\npartitions:{}\r\npartitions_owned:{}\r\nhints_queued:{}\r\n\r\n",
        c.nodes, c.nodes_up, c.layout_version, c.partitions, c.partitions_owned, c.hints_queued
    );
}

fn fsync_name(policy: FsyncPolicy) -> &'static str {
    match policy {
        FsyncPolicy::Always => "always",
        FsyncPolicy::Everysec => "everysec",
        FsyncPolicy::No => "no",
    }
}

pub(crate) fn info<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let section = args
        .get(1)
        .map(|s| String::from_utf8_lossy(s).to_ascii_lowercase())
        .unwrap_or_default();
    Ok(Frame::Verbatim(info_text(cx, &section).into()))
}

fn command_info(cmd: Cmd) -> Frame {
    let name = Frame::Bulk(Bytes::from_static(cmd.name().as_bytes()));
    let flags = cmd
        .flags()
        .iter()
        .map(|f| Frame::Simple((*f).into()))
        .collect();
    let takes_keys = cmd.flags().contains(&"readonly") || cmd.flags().contains(&"write");
    let (first, last, step) = match cmd {
        _ if !takes_keys => (0, 0, 0),
        Cmd::Mget | Cmd::Del | Cmd::Unlink | Cmd::Exists => (1, -1, 1),
        Cmd::Mset => (1, -1, 2),
        _ => (1, 1, 1),
    };
    Frame::Array(vec![
        name,
        Frame::Integer(i64::from(cmd.arity())),
        Frame::Set(flags),
        Frame::Integer(first),
        Frame::Integer(last),
        Frame::Integer(step),
    ])
}

pub(crate) fn command(args: &[Bytes]) -> Reply {
    let Some(sub) = args.get(1) else {
        return Ok(Frame::Array(
            Cmd::ALL.iter().map(|c| command_info(*c)).collect(),
        ));
    };
    if is(sub, "COUNT") {
        Ok(Frame::Integer(Cmd::ALL.len() as i64))
    } else if is(sub, "INFO") {
        let infos = args[2..]
            .iter()
            .map(|name| Cmd::lookup(name).map_or(Frame::NullArray, command_info))
            .collect();
        Ok(Frame::Array(infos))
    } else if is(sub, "DOCS") {
        Ok(Frame::Map(Vec::new()))
    } else {
        let shown = String::from_utf8_lossy(sub).into_owned();
        Err(CmdError(
            format!("ERR unknown subcommand '{shown}'. Try COMMAND HELP.").into(),
        ))
    }
}

/// Longest CONFIG GET pattern considered (bounds the matcher's recursion).
const MAX_GLOB_PATTERN_BYTES: usize = 128;

/// Redis-style glob match supporting `*` and `?` (all CONFIG GET needs).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    pattern.len() <= MAX_GLOB_PATTERN_BYTES && glob_inner(pattern, text)
}

fn glob_inner(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.split_first(), text.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => {
            glob_inner(rest, text)
                || text
                    .split_first()
                    .is_some_and(|(_, t)| glob_inner(pattern, t))
        }
        (Some((b'?', p)), Some((_, t))) => glob_inner(p, t),
        (Some((p, pr)), Some((t, tr))) => p.eq_ignore_ascii_case(t) && glob_inner(pr, tr),
        _ => false,
    }
}

pub(crate) fn config<S: Store>(cx: &mut Cx<'_, S>, args: &[Bytes]) -> Reply {
    let sub = &args[1];
    if is(sub, "GET") && args.len() >= 3 {
        let c = &cx.shared.config;
        let params: [(&str, String); 9] = [
            ("save", String::new()),
            (
                "appendonly",
                if c.engine == "memory" { "no" } else { "yes" }.into(),
            ),
            ("appendfsync", fsync_name(c.fsync).into()),
            ("maxclients", c.max_connections.to_string()),
            ("maxmemory", "0".into()),
            ("databases", cx.store().keyspaces().len().to_string()),
            (
                "proto-max-bulk-len",
                c.decode_limits.max_bulk_bytes.to_string(),
            ),
            ("port", c.addr.port().to_string()),
            ("bind", c.addr.ip().to_string()),
        ];
        let mut pairs = Vec::new();
        for (name, value) in &params {
            if args[2..].iter().any(|p| glob(p, name.as_bytes())) {
                pairs.push((
                    Frame::Bulk(Bytes::from_static(name.as_bytes())),
                    Frame::Bulk(value.clone().into()),
                ));
            }
        }
        return Ok(Frame::Map(pairs));
    }
    if is(sub, "SET") {
        return Err(CmdError(
            "ERR CONFIG SET is not supported: edit the config file (or flags) and restart the node"
                .into(),
        ));
    }
    if is(sub, "RESETSTAT") {
        return Ok(Frame::ok());
    }
    let shown = String::from_utf8_lossy(sub).into_owned();
    Err(CmdError(
        format!(
            "ERR unknown subcommand or wrong number of arguments for '{shown}'. Try CONFIG HELP."
        )
        .into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_persistence_says_err_and_why_once_writes_are_refused() {
        let mut stats = StoreStats {
            engine: "fjall",
            engine_bytes: 10,
            keys: vec![],
            expired_reclaimed: 0,
            cluster: None,
            write_error: None,
        };
        let mut out = String::new();
        persistence_section(&mut out, &stats, FsyncPolicy::Everysec);
        assert!(out.contains("aof_last_write_status:ok\r\n"), "{out}");
        assert!(!out.contains("write_error"), "{out}");

        stats.write_error = Some("journal fsync failed,\nEIO".into());
        let mut out = String::new();
        persistence_section(&mut out, &stats, FsyncPolicy::Everysec);
        assert!(out.contains("aof_last_write_status:err\r\n"), "{out}");
        assert!(
            out.contains("write_error:journal fsync failed  EIO\r\n"),
            "{out}"
        );
        assert!(out.ends_with("\r\n\r\n"), "{out}");
    }

    #[test]
    fn glob_matches_like_redis() {
        assert!(glob(b"*", b"save"));
        assert!(glob(b"SAVE", b"save"));
        assert!(glob(b"append*", b"appendfsync"));
        assert!(glob(b"s?ve", b"save"));
        assert!(!glob(b"save", b"saves"));
        assert!(!glob(b"x*", b"save"));
    }
}
