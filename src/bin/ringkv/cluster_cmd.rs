//! `ringkv cluster status` and `ringkv cluster repair-status`: the cluster
//! as one node sees it (`GET /v1/cluster`), and that node's hints and
//! anti-entropy exchanges (`GET /v1/repair`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use ringkv::http::RepairView;
use ringkv::membership::ClusterView;

/// How long the status call may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer read.
const MAX_RESPONSE_BYTES: u64 = 16 << 20;

/// `ringkv cluster ...`
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Every node with its addresses, zone, up/down as the node asked sees it,
    /// partitions owned, and the layout version.
    Status(StatusArgs),
    /// One node's repair activity: hints queued per target node, and its
    /// anti-entropy rounds, last exchange per partition and keys repaired.
    RepairStatus(StatusArgs),
}

/// Flags of `ringkv cluster status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// HTTP address of the node to ask: its `node.http_addr` (127.0.0.1:7380
    /// for `ringkv server`; under `dev-cluster`, node i's RESP port + 100,
    /// 127.0.0.1:7479 for node 1).
    #[arg(long, default_value = "127.0.0.1:7380")]
    node: String,
    /// Print the raw JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The node's `node.http_token`, when it has one.
    #[arg(long, env = "RINGKV_HTTP_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

fn http_get(node: &str, path: &str, token: Option<&str>) -> anyhow::Result<String> {
    let addr: SocketAddr = node
        .to_socket_addrs()
        .with_context(|| format!("bad node address {node:?}"))?
        .next()
        .with_context(|| format!("{node:?} resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).with_context(|| {
        format!("cannot reach {addr}: is the node running, and is this its HTTP address?")
    })?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {node}\r\nConnection: close\r\n{auth}\r\n"
    )?;
    let raw = read_http_answer(stream, &addr)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status == "401" {
        bail!("{addr}{path} needs the node's http_token: pass --token or set RINGKV_HTTP_TOKEN");
    }
    if status != "200" {
        bail!("{addr}{path} answered HTTP {status}: {body}");
    }
    Ok(body.to_owned())
}

/// The whole answer of an HTTP server, which closes the connection after
/// it. What does not begin as HTTP is refused at once: a RESP port (the
/// commonest wrong address: dev-cluster's RESP ports sit right by
/// `ringkv server`'s HTTP port) answers each line with an error and keeps
/// the connection open, which would otherwise end only in a timeout.
fn read_http_answer(stream: TcpStream, addr: &SocketAddr) -> anyhow::Result<String> {
    const HTTP: &[u8] = b"HTTP/";
    let mut raw = Vec::new();
    let mut reader = stream.take(MAX_RESPONSE_BYTES);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let read = reader
            .read(&mut chunk)
            .with_context(|| format!("reading the answer of {addr}"))?;
        if read == 0 {
            break;
        }
        raw.extend_from_slice(&chunk[..read]);
        let head = &raw[..raw.len().min(HTTP.len())];
        if !HTTP.starts_with(head) {
            let begins = String::from_utf8_lossy(&raw[..raw.len().min(40)]);
            let resp = matches!(raw[0], b'-' | b'+' | b':' | b'$' | b'*' | b'_' | b'%');
            bail!(
                "{addr} did not answer in HTTP (its answer began {begins:?}){}",
                if resp {
                    ": that is a Redis-protocol (RESP) port; pass the node's HTTP address \
                     (node.http_addr: RESP port + 100 under dev-cluster, 127.0.0.1:7479 for node 1)"
                } else {
                    ""
                }
            );
        }
    }
    String::from_utf8(raw).with_context(|| format!("{addr} answered with invalid UTF-8"))
}

fn print_table(view: &ClusterView) {
    println!(
        "cluster as {} sees it: layout version {}, {} partitions, {} nodes",
        view.node,
        view.layout_version,
        view.partitions,
        view.members.len()
    );
    println!(
        "{:<16} {:<8} {:<6} {:<10} {:>6} {:>8}  {:<22} {:<22} {:<22} {:>6}  LAST SEEN",
        "NAME",
        "ID",
        "STATUS",
        "ZONE",
        "OWNED",
        "REPLICAS",
        "RESP ADDR",
        "PEER ADDR",
        "GOSSIP ADDR",
        "LAYOUT"
    );
    for m in &view.members {
        let seen = m
            .last_seen_ms_ago
            .map_or("never".to_string(), |ms| format!("{ms} ms ago"));
        let gossip = m.gossip_addr.as_deref().unwrap_or("-");
        let resp = m.resp_addr.as_deref().unwrap_or("-");
        let mut layout = m.layout_version.map_or("-".to_string(), |v| v.to_string());
        if m.layout_mismatch {
            layout.push('!');
        }
        println!(
            "{:<16} {:08x} {:<6} {:<10} {:>6} {:>8}  {resp:<22} {:<22} {gossip:<22} {layout:>6}  {seen}",
            m.name,
            m.node_id,
            if m.up { "up" } else { "DOWN" },
            m.zone.as_deref().unwrap_or("-"),
            m.partitions_owned,
            m.partitions_held,
            if m.peer_addr.is_empty() {
                "-"
            } else {
                &m.peer_addr
            },
        );
    }
    let mismatched: Vec<&str> = view
        .members
        .iter()
        .filter(|m| m.layout_mismatch)
        .map(|m| m.name.as_str())
        .collect();
    if !mismatched.is_empty() {
        println!(
            "WARNING: {} run(s) layout version {} with a different assignment (digest differs, marked !): \
             nodes disagree about where data lives; give every node the same cluster.nodes and ringkv release",
            mismatched.join(", "),
            view.layout_version
        );
    }
}

fn print_repair(view: &RepairView, now_ms: u64) {
    println!("repair activity on {}", view.node);
    if view.hints.is_empty() {
        println!("hints: none kept");
    } else {
        println!(
            "{:<16} {:>8} {:>12} {:>12} {:>10} {:>8}",
            "HINTS FOR", "QUEUED", "BYTES", "OLDEST", "DELIVERED", "DROPPED"
        );
        for (target, q) in &view.hints {
            let oldest = q.oldest_ms.map_or("-".to_string(), |ms| {
                format!("{} s ago", now_ms.saturating_sub(ms) / 1000)
            });
            println!(
                "{target:<16} {:>8} {:>12} {oldest:>12} {:>10} {:>8}",
                q.hints, q.bytes, q.delivered, q.dropped
            );
        }
    }
    let Some(aae) = &view.anti_entropy else {
        println!("anti-entropy: off");
        return;
    };
    let exchanges = &aae.exchanges;
    let failed = exchanges.iter().filter(|e| e.error.is_some()).count();
    let pulled: u64 = exchanges.iter().map(|e| e.pulled).sum();
    let pushed: u64 = exchanges.iter().map(|e| e.pushed).sum();
    let oldest = exchanges.iter().map(|e| e.at_ms).min();
    println!(
        "anti-entropy: every {} ms, {} rounds done; {} partition replicas exchanged ({} in sync, {} failed), oldest {}; keys repaired in the last exchanges: {} pulled, {} pushed",
        aae.interval_ms,
        aae.rounds,
        exchanges.len(),
        exchanges.iter().filter(|e| e.in_sync).count(),
        failed,
        oldest.map_or("-".to_string(), |ms| format!(
            "{} s ago",
            now_ms.saturating_sub(ms) / 1000
        )),
        pulled,
        pushed,
    );
    let notable: Vec<_> = exchanges
        .iter()
        .filter(|e| e.error.is_some() || e.pulled + e.pushed > 0)
        .collect();
    if notable.is_empty() {
        return;
    }
    println!(
        "{:<12} {:>9} {:<16} {:>8} {:>8} {:>10}  RESULT",
        "KEYSPACE", "PARTITION", "PEER", "PULLED", "PUSHED", "BYTES"
    );
    for e in notable {
        println!(
            "{:<12} {:>9} {:<16} {:>8} {:>8} {:>10}  {}",
            e.keyspace,
            e.partition,
            e.peer,
            e.pulled,
            e.pushed,
            e.bytes,
            e.error.as_deref().unwrap_or("repaired")
        );
    }
}

/// Runs a `ringkv cluster` command.
pub fn run(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status(args) => {
            let body = http_get(&args.node, "/v1/cluster", args.token.as_deref())?;
            if args.json {
                println!("{body}");
                return Ok(());
            }
            let view: ClusterView =
                serde_json::from_str(&body).context("unexpected answer from /v1/cluster")?;
            print_table(&view);
            Ok(())
        }
        ClusterCommand::RepairStatus(args) => {
            let body = http_get(&args.node, "/v1/repair", args.token.as_deref())?;
            if args.json {
                println!("{body}");
                return Ok(());
            }
            let view: RepairView =
                serde_json::from_str(&body).context("unexpected answer from /v1/repair")?;
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            print_repair(&view, now_ms);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;
    use std::net::TcpListener;

    use super::*;

    /// Serves one connection with `answer` after the whole request, then
    /// keeps it open (as a RESP server does) unless `close`.
    fn one_shot_server(answer: &'static str, close: bool) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            // NOTE: the whole request first: a close with unread bytes
            // would reset the connection under the client's read.
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 0 && !line.ends_with("\r\n\r\n") {}
            conn.write_all(answer.as_bytes()).unwrap();
            if !close {
                // NOTE: bounded: held until the client hangs up, at most 10 s.
                conn.set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let _ = conn.read(&mut [0u8; 1024]);
            }
        });
        addr
    }

    #[test]
    fn an_http_answer_is_read_to_its_end() {
        let addr = one_shot_server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", true);
        assert_eq!(http_get(&addr, "/v1/cluster", None).unwrap(), "{}");
    }

    #[test]
    fn a_resp_port_is_named_as_such_without_waiting_for_a_timeout() {
        let addr = one_shot_server(
            "-ERR wrong number of arguments for 'get' command\r\n",
            false,
        );
        let err = http_get(&addr, "/v1/cluster", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Redis-protocol (RESP) port"), "{err}");
        assert!(err.contains("7479"), "names the HTTP port to use: {err}");
    }
}
