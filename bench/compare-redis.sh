#!/usr/bin/env bash
# Side-by-side throughput: ringkv vs redis-server, same redis-benchmark commands, same run.
#
# Usage: bench/compare-redis.sh [--requests N] [--reps N] [--only-cluster | --only-peer]
#                               [--no-peer] [--record]
#   --requests N  requests per redis-benchmark run (default 200000)
#   --reps N      runs of each benchmark per server, alternating; medians reported (default 3)
#   --only-cluster  skip the single-node runs (the cluster runs, fjall:
#                   quorum/quorum, one/one, quorum/quorum with one of the 3
#                   nodes killed; memory engine: quorum/quorum, one/one)
#   --record      also append the result table to bench/RESULTS.md
#   --only-peer   run only the peer row below
#   --no-peer     skip the peer row: redis-server with two replicas (its own
#                 asynchronous replication, three copies), against the lone
#                 redis-server, for what replication costs Redis on this machine
#
# Builds ringkv in release mode, installs redis-server/redis-tools with apt-get
# if they are missing, starts redis-server and ringkv on free loopback ports,
# runs each benchmark against redis then ringkv, and prints ops/s, p50 and
# p99 for both and the ratio ringkv/redis. Stops exactly the processes it started.
set -euo pipefail

requests=200000
reps=3
only_cluster=0
record=0
peer=1
only_peer=0
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) requests="$2"; shift 2 ;;
    --reps) reps="$2"; shift 2 ;;
    --only-cluster) only_cluster=1; shift ;;
    --record) record=1; shift ;;
    --no-peer) peer=0; shift ;;
    --only-peer) only_peer=1; only_cluster=1; shift ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  echo "installing redis-server and redis-tools with apt-get" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
fi

cargo build --release --quiet
bin="$root/target/release/ringkv"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

wait_ready() { # port
  for _ in $(seq 1 100); do
    if redis-cli -p "$1" ping >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "server on port $1 did not start" >&2
  return 1
}

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
wait_ready "$redis_port"

start_ringkv() { # engine fsync -> sets ringkv_port and ringkv_pid
  ringkv_port=$(free_port)
  local http_port
  http_port=$(free_port)
  "$bin" server --engine "$1" --fsync "$2" --data-dir "$work/data-$1" \
    --resp-addr "127.0.0.1:$ringkv_port" --http-addr "127.0.0.1:$http_port" \
    2>"$work/ringkv-$1.log" &
  ringkv_pid=$!
  pids+=("$ringkv_pid")
  wait_ready "$ringkv_port"
}

# One redis-benchmark run; prints "rps p50 p99" per test (SET then GET).
run_bench() { # port extra-args...
  local port=$1; shift
  # NOTE: a benchmark that stops on an error reply yields no rows instead of
  # aborting the whole comparison (its stderr goes to the log).
  # NOTE: bounded: redis-benchmark waits forever for a server that died.
  { timeout 600 redis-benchmark -p "$port" -t set,get -n "$requests" -c 50 --csv "$@" 2>>"$work/benchmark-errors.log" || true; } |
    awk -F'","' 'NR>1 { gsub(/"/,""); split($0,f,","); print f[1], f[2], f[5], f[7] }'
}

# Median of each column over the runs in a file of "test rps p50 p99" lines.
medians() { # file
  sort -k1,1 -s "$1" | awk '
    function med(arr, n,   i, j, t) {
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (arr[j] < arr[i]) { t = arr[i]; arr[i] = arr[j]; arr[j] = t }
      return arr[int((n + 1) / 2)]
    }
    function flush() { if (n) printf "%s %.0f %.3f %.3f\n", name, med(r, n), med(p, n), med(q, n) }
    $1 != name { flush(); name = $1; n = 0 }
    { n++; r[n] = $2; p[n] = $3; q[n] = $4 }
    END { flush() }'
}

table="$work/table.md"
{
  echo "### $(date -u +%Y-%m-%d) commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), nproc $(nproc), $requests requests, 50 clients, median of $reps alternating runs"
  echo
  echo "| ringkv | benchmark | test | redis ops/s | ringkv ops/s | ratio | redis p50/p99 ms | ringkv p50/p99 ms |"
  echo "|---|---|---|---:|---:|---:|---|---|"
} >"$table"

# Runs every benchmark variant against redis and the ringkv at $2, alternating,
# and appends the median rows labelled $1 to the table.
bench_against() { # label ringkv-port
  local label=$1 port=$2
  for variant in "plain:" "pipeline 16:-P 16" "1 KiB values:-d 1024"; do
    name=${variant%%:*}
    args=${variant#*:}
    : >"$work/redis.runs"
    : >"$work/ringkv.runs"
    for _ in $(seq 1 "$reps"); do
      # shellcheck disable=SC2086
      run_bench "$redis_port" $args >>"$work/redis.runs"
      # shellcheck disable=SC2086
      run_bench "$port" $args >>"$work/ringkv.runs"
    done
    paste -d' ' <(medians "$work/redis.runs") <(medians "$work/ringkv.runs") |
      while read -r test r_rps r_p50 r_p99 _ k_rps k_p50 k_p99; do
        ratio=$(awk -v a="$k_rps" -v b="$r_rps" 'BEGIN { printf "%.2f", a / b }')
        echo "| $label | $name | $test | $r_rps | $k_rps | ${ratio}x | $r_p50 / $r_p99 | $k_p50 / $k_p99 |"
      done >>"$table"
  done
}

# A base port P with P..P+2, P+100..P+102 and P+200..P+202 free (dev-cluster's layout).
free_base() {
  python3 - <<'PY'
import random, socket
for _ in range(500):
    base = random.randint(20000, 40000)
    socks = []
    try:
        for off in (0, 1, 2, 100, 101, 102, 200, 201, 202):
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", base + off))
        print(base)
        break
    except OSError:
        pass
    finally:
        for s in socks:
            s.close()
PY
}

if [ "$only_cluster" = 0 ]; then
  for setup in "memory everysec" "fjall everysec"; do
    set -- $setup
    start_ringkv "$1" "$2"
    bench_against "single node, $1 ($2)" "$ringkv_port"
    kill "$ringkv_pid"
    wait "$ringkv_pid" 2>/dev/null || true
  done
fi

# "quorum-down": quorum/quorum with node3 killed (SIGKILL) before the runs,
# for throughput while one replica is down (hints pile up on the others).
# "memory-*": the same cluster on the memory engine, like the redis-server
# it is compared with (no persistence), so the cost of the cluster shows
# apart from the cost of the disk engine.
setups="quorum one quorum-down memory-quorum memory-one"
[ "$only_peer" = 1 ] && setups=""
for setup in $setups; do
  engine=fjall
  levels=${setup%-down}
  if [ "${setup#memory-}" != "$setup" ]; then
    engine=memory
    levels=${setup#memory-}
  fi
  base=$(free_base)
  "$bin" dev-cluster --nodes 3 --base-port "$base" --data-dir "$work/cluster-$setup" \
    --engine "$engine" --read-level "$levels" --write-level "$levels" \
    >"$work/cluster-$setup.log" 2>&1 &
  cluster_pid=$!
  pids+=("$cluster_pid")
  for i in 0 1 2; do wait_ready $((base + i)); done
  # NOTE: dev-cluster prints this once it saw every node start; killing a
  # node before that makes it stop the whole cluster as a failed start.
  for _ in $(seq 1 100); do
    grep -q "Ctrl-C stops every node" "$work/cluster-$setup.log" && break
    sleep 0.1
  done
  label="3-node dev-cluster, n=3, $engine, $levels/$levels"
  if [ "$setup" = quorum-down ]; then
    # NOTE: the node's own config path names exactly the process this run started.
    pkill -KILL -f -- "$work/cluster-$setup/node3/ringkv.toml"
    sleep 3
    label="$label, node3 down"
  fi
  bench_against "$label" "$base"
  kill "$cluster_pid"
  wait "$cluster_pid" 2>/dev/null || true
done

# The peer doing the same replication: redis-server with two replicas
# (asynchronous, as Redis replicates: three copies, no acknowledgement, like
# ringkv's one/one with n = 3), every client on the primary. Its ratio to the
# lone redis-server shows what three copies cost on this machine to Redis
# itself.
if [ "$peer" = 1 ]; then
  primary=$(free_port)
  peer_pids=()
  for role in primary replica1 replica2; do
    port=$primary
    extra=()
    if [ "$role" != primary ]; then
      port=$(free_port)
      extra=(--replicaof 127.0.0.1 "$primary")
    fi
    mkdir -p "$work/$role"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --dir "$work/$role" --logfile "$work/$role/redis.log" "${extra[@]}" &
    peer_pids+=($!)
    pids+=($!)
    wait_ready "$port"
  done
  for _ in $(seq 1 100); do
    [ "$(redis-cli -p "$primary" info replication | grep -c 'state=online')" = 2 ] && break
    sleep 0.1
  done
  bench_against "peer: redis-server + 2 replicas (async)" "$primary"
  for pid in "${peer_pids[@]}"; do kill "$pid"; wait "$pid" 2>/dev/null || true; done
fi

cat "$table"
if [ "$record" = 1 ]; then
  { echo; cat "$table"; } >>"$root/bench/RESULTS.md"
  echo "appended to bench/RESULTS.md" >&2
fi
