#!/usr/bin/env bash
# Alternating A/B runs: two builds, or two configurations of one build, each started afresh
# with `kvctl cluster up` and driven by the same kv-bench binary and workload, A B A B ...
# On a machine whose speed drifts during a session (this one's does, by 2x or more), only
# pairs run back to back compare; the summary gives every run, then the medians.
#
#   A=DIR [B=DIR] [A_ARGS=...] [B_ARGS=...] [CLUSTER=...] [NODE_ARGS=...] [CLIENTS=16]
#   [PAIRS=3] [DUR=10s] [WARM=2s] bench/scripts/ab.sh OUT_DIR
#
#   A, B        directories holding kvctl and kv-node (B defaults to A: then A_ARGS and B_ARGS
#               are the difference); kv-bench is the one in target/release (built if missing)
#   CLUSTER     `kvctl cluster up` flags of both sides (default: 5 leaderless nodes, N=3 R=2
#               W=2; fsync is batch unless a side's flags say otherwise); A_ARGS / B_ARGS are
#               added to it per side
#   NODE_ARGS   kv-node flags of both sides (default: --worker-threads 1, as the other scripts);
#               A_NODE_ARGS / B_NODE_ARGS are added to it per side
#   BENCH_ARGS  more kv-bench flags (e.g. "--w 2 --read-from leader" for leader-follower)
#   SINGLE=1    one kv-node instead of a cluster (issue #2's benchmark): CLUSTER, A_ARGS and
#               B_ARGS are then kv-node flags too (default CLUSTER: --storage memory)
#   FSYNC_DELAY=US  every node's fsync and fdatasync held US µs longer (strace; 4000 for the
#               4 ms fsync the issues assume; see common.sh)
#
# Examples (README, Benchmarks):
#   git worktree add /tmp/base HEAD~1 && (cd /tmp/base && cargo build --release -p kv-node)
#   A=/tmp/base/target/release B=target/release bench/scripts/ab.sh /tmp/ab-change
#   A=target/release B_ARGS="--fsync never" bench/scripts/ab.sh /tmp/ab-fsync
#   A=target/release CLUSTER="--nodes 3 --w 2 --r 2" BENCH_ARGS="--w 2 --read-from leader" \
#     CLIENTS=256 B_ARGS="--fsync never" bench/scripts/ab.sh /tmp/ab-lf
#   A=target/release B_NODE_ARGS="--group-commit-window 2ms" CLIENTS=256 bench/scripts/ab.sh /tmp/ab-gcw
#   SINGLE=1 A=/tmp/base/target/release B=target/release bench/scripts/ab.sh /tmp/ab-single
#
# OUT_DIR gets commands.txt, each run's kv-bench output (a-1/, b-1/, ...) and AB.md: ops/s,
# p50/p99, the generator's and the servers' CPU per operation, and the servers' CPU per
# operation by thread name (the request runtime, the log flusher, the raft log writer).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: A=DIR [B=DIR] [A_ARGS=..] [B_ARGS=..] bench/scripts/ab.sh OUT_DIR}
A=${A:?A=DIR: the directory holding kvctl and kv-node of side A}
B=${B:-$A}
A_ARGS=${A_ARGS:-}
B_ARGS=${B_ARGS:-}
SINGLE=${SINGLE:-}
if [ -n "$SINGLE" ]; then CLUSTER=${CLUSTER:---storage memory}; fi
CLUSTER=${CLUSTER:---nodes 5 --mode leaderless --n 3 --r 2 --w 2}
NODE_ARGS=${NODE_ARGS:---worker-threads 1}
A_NODE_ARGS=${A_NODE_ARGS:-}
B_NODE_ARGS=${B_NODE_ARGS:-}
BENCH_ARGS=${BENCH_ARGS:-}
CLIENTS=${CLIENTS:-16}
PAIRS=${PAIRS:-3}
DUR=${DUR:-10s}
WARM=${WARM:-2s}
for d in "$A" "$B"; do
  for b in kvctl kv-node; do
    [ -x "$d/$b" ] || { echo "ab.sh: $d/$b not found (build it: cargo build --release -p kv-node)" >&2; exit 1; }
  done
done
BIN=target/release # kv-bench's
[ -x $BIN/kv-bench ] || cargo build --release -q -p kv-bench
BASE_PORT=7601; ADMIN_BASE_PORT=9601
mkdir -p "$OUT"
: > "$OUT/commands.txt"
TMP=$(mktemp -d)
CLUSTER_PID=
stop() { # SIGTERM (kvctl passes it on to its nodes; strace, to what it started), then waits
  [ -n "$CLUSTER_PID" ] || return 0
  local all=("$CLUSTER_PID" $(descendants "$CLUSTER_PID")) p
  kill -TERM "$CLUSTER_PID" 2>/dev/null || true
  for p in "${all[@]}"; do for _ in $(seq 150); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done; done
  CLUSTER_PID=
}
trap 'stop; rm -rf "$TMP"' EXIT
source bench/scripts/common.sh # bench: the workload every script runs
delay_fsync # WRAP: strace, with FSYNC_DELAY

# started: the process that WRAP (strace) started for CLUSTER_PID, or CLUSTER_PID itself
started() { if [ ${#WRAP[@]} -gt 0 ]; then pgrep -P "$CLUSTER_PID"; else echo "$CLUSTER_PID"; fi; }

# threads PIDS...: "comm cpu_ticks" per thread of the given processes
threads() { for p in "$@"; do for t in /proc/"$p"/task/*; do
  echo "$(tr ' ' _ < "$t/comm") $(awk '{print $14 + $15}' "$t/stat" 2>/dev/null || echo 0)"
done; done 2>/dev/null; }

single() { # single NAME DIR ARGS NODE_ARGS: one kv-node; sets CLUSTER_PID, EPS and NODES
  local name=$1 dir=$2 args=$3 node_args=$4 data=(--data-dir "$TMP/data")
  [[ " $CLUSTER $args $NODE_ARGS $node_args " == *" --storage memory "* ]] && data=()
  # shellcheck disable=SC2086 # CLUSTER, ARGS and NODE_ARGS are flag lists
  local up=("$dir/kv-node" --id ab --listen 127.0.0.1:$BASE_PORT
            --admin-listen 127.0.0.1:$ADMIN_BASE_PORT "${data[@]}" $CLUSTER $args
            $NODE_ARGS $node_args)
  echo "$name: ${WRAP[*]} ${up[*]}" >> "$OUT/commands.txt"
  "${WRAP[@]}" "${up[@]}" > "$TMP/cluster.out" 2>&1 &
  CLUSTER_PID=$!
  local ready=
  for _ in $(seq 100); do
    curl -sf "127.0.0.1:$ADMIN_BASE_PORT/readyz" >/dev/null && { ready=1; break; }
    kill -0 "$CLUSTER_PID" 2>/dev/null || { cat "$TMP/cluster.out" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$ready" ] || { echo "ab.sh: $name: kv-node not ready within 10 s" >&2; cat "$TMP/cluster.out" >&2; exit 1; }
  EPS=127.0.0.1:$BASE_PORT
  mapfile -t NODES < <(started)
}

run() { # run SIDE INDEX DIR ARGS NODE_ARGS
  local side=$1 i=$2 dir=$3 args=$4 node_args=$5 name="$1-$2"
  rm -rf "$TMP/data"
  if [ -n "$SINGLE" ]; then
    single "$name" "$dir" "$args" "$node_args"
  else
    cluster "$name" "$dir" "$args" "$node_args"
  fi
  sleep 1 # a leader-follower cluster elects; kv-bench follows the leader from any endpoint
  threads "${NODES[@]}" > "$TMP/before"
  SERVERS=$CLUSTER_PID
  # shellcheck disable=SC2086 # BENCH_ARGS is a flag list
  bench "$name" --driver kv --endpoints "$EPS" --clients "$CLIENTS" $BENCH_ARGS
  threads "${NODES[@]}" > "$OUT/$name.threads-after"
  mv "$TMP/before" "$OUT/$name.threads-before"
  stop
}

cluster() { # cluster NAME DIR ARGS NODE_ARGS: `kvctl cluster up`; sets CLUSTER_PID, EPS and NODES
  local name=$1 dir=$2 args=$3 node_args=$4
  # shellcheck disable=SC2086 # CLUSTER, ARGS and NODE_ARGS are flag lists
  local up=("$dir/kvctl" cluster up $CLUSTER $args --base-port $BASE_PORT
            --admin-base-port $ADMIN_BASE_PORT --data-dir "$TMP/data" -- $NODE_ARGS $node_args)
  echo "$name: ${WRAP[*]} ${up[*]}" >> "$OUT/commands.txt"
  "${WRAP[@]}" "${up[@]}" > "$TMP/cluster.out" 2>&1 &
  CLUSTER_PID=$!
  wait_up "$TMP/cluster.out" || exit 1
  EPS=$(grep -o 'KV_ENDPOINTS=[^ ]*' "$TMP/cluster.out" | head -1 | cut -d= -f2)
  mapfile -t NODES < <(pgrep -P "$(started)")
}

for i in $(seq "$PAIRS"); do
  run a "$i" "$A" "$A_ARGS" "$A_NODE_ARGS"
  run b "$i" "$B" "$B_ARGS" "$B_NODE_ARGS"
done

python3 - "$OUT" "$PAIRS" "$A $A_ARGS -- $A_NODE_ARGS" "$B $B_ARGS -- $B_NODE_ARGS" "$CLUSTER" "$CLIENTS" > "$OUT/AB.md" <<'EOF'
import json, os, statistics, sys
from collections import defaultdict
out, pairs, a, b, cluster, clients = sys.argv[1], int(sys.argv[2]), *sys.argv[3:]
tick = 1e6 / os.sysconf("SC_CLK_TCK")  # µs per clock tick

def threads(path):
    cpu = defaultdict(float)
    for line in open(path):
        name, ticks = line.rsplit(" ", 1)
        cpu[name] += float(ticks)
    return cpu

rows, groups = [], set()
for i in range(1, pairs + 1):
    for side in "ab":
        name = f"{side}-{i}"
        s = json.load(open(f"{out}/{name}/summary.json"))
        before, after = threads(f"{out}/{name}.threads-before"), threads(f"{out}/{name}.threads-after")
        # The thread counters run from before the warm-up to the end: divide by every
        # operation of that span, measured ones scaled by (warm-up + run) / run.
        span = (s["config"]["duration"] + s["config"]["warmup"]) / s["config"]["duration"]
        ops = s["ops"] * span
        by = {k: (after[k] - before.get(k, 0)) * tick / ops for k in after}
        groups |= {k for k, v in by.items() if v >= 0.5}
        rows.append((name, s, by))

groups = sorted(groups)
print(f"# A/B: {cluster}, {clients} clients\n")
print(f"A: {a}  \nB: {b}\n")
print("| run | ops/s | p50 µs | p99 µs | generator µs/op | servers µs/op | "
      + " | ".join(f"{g} µs/op" for g in groups) + " |")
print("|---|" + "---:|" * (5 + len(groups)))
for name, s, by in rows:
    print(f"| {name} | {s['ops_per_sec']:,.0f} | {s['latency_us']['p50']} | {s['latency_us']['p99']} "
          f"| {s['client_cpu']['per_op_us']:.1f} | {s['server_cpu']['per_op_us']:.1f} | "
          + " | ".join(f"{by.get(g, 0):.1f}" for g in groups) + " |")
med = {side: statistics.median(s["ops_per_sec"] for n, s, _ in rows if n[0] == side) for side in "ab"}
srv = {side: statistics.median(s["server_cpu"]["per_op_us"] for n, s, _ in rows if n[0] == side) for side in "ab"}
wins = sum(1 for i in range(0, len(rows), 2) if rows[i + 1][1]["ops_per_sec"] > rows[i][1]["ops_per_sec"])
print(f"\nmedian ops/s: A {med['a']:,.0f}, B {med['b']:,.0f} (B/A {med['b'] / med['a']:.3f}); "
      f"B faster in {wins} of {pairs} pairs")
print(f"median servers µs/op: A {srv['a']:.1f}, B {srv['b']:.1f}")
print("\nThreads by name: kvctl (nodes started by `kvctl cluster up`) or kv-node is a node's main "
      "thread, which with --worker-threads 1 runs its requests, peers and driver; "
      "kv-node-worker: request threads otherwise; kv-wal-flusher: the log's write and fsync; "
      "kv-raft-log: the leader-follower log writer. Threads under 0.5 µs/op are left out.")
EOF
cat "$OUT/AB.md"
