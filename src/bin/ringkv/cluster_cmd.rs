//! `ringkv cluster status`: the cluster as one node sees it, from its
//! `GET /v1/cluster`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
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
}

/// Flags of `ringkv cluster status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// HTTP address of the node to ask.
    #[arg(long, default_value = "127.0.0.1:7380")]
    node: String,
    /// Print the raw JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn http_get(node: &str, path: &str) -> anyhow::Result<String> {
    let addr: SocketAddr = node
        .to_socket_addrs()
        .with_context(|| format!("bad node address {node:?}"))?
        .next()
        .with_context(|| format!("{node:?} resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).with_context(|| {
        format!("cannot reach {addr}: is the node running, and is this its HTTP address?")
    })?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {node}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    stream.take(MAX_RESPONSE_BYTES).read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        bail!("{addr}{path} answered HTTP {status}: {body}");
    }
    Ok(body.to_owned())
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
        "{:<16} {:<6} {:<10} {:>10}  {:<22} {:<22} {:>6}  LAST SEEN",
        "NAME", "STATUS", "ZONE", "PARTITIONS", "PEER ADDR", "GOSSIP ADDR", "LAYOUT"
    );
    for m in &view.members {
        let seen = m
            .last_seen_ms_ago
            .map_or("never".to_string(), |ms| format!("{ms} ms ago"));
        let gossip = m.gossip_addr.as_deref().unwrap_or("-");
        let layout = m.layout_version.map_or("-".to_string(), |v| v.to_string());
        println!(
            "{:<16} {:<6} {:<10} {:>10}  {:<22} {gossip:<22} {layout:>6}  {seen}",
            m.name,
            if m.up { "up" } else { "DOWN" },
            m.zone.as_deref().unwrap_or("-"),
            m.partitions_owned,
            if m.peer_addr.is_empty() {
                "-"
            } else {
                &m.peer_addr
            },
        );
    }
}

/// Runs a `ringkv cluster` command.
pub fn run(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status(args) => {
            let body = http_get(&args.node, "/v1/cluster")?;
            if args.json {
                println!("{body}");
                return Ok(());
            }
            let view: ClusterView =
                serde_json::from_str(&body).context("unexpected answer from /v1/cluster")?;
            print_table(&view);
            Ok(())
        }
    }
}
