#!/usr/bin/env bash
# Leaderless beside etcd and Redis, one session, the same kv-bench client and workload:
#   - etcd 3.4, three members (leader endpoint)
#   - quorumkv leaderless, 5 nodes, N=3 R=2 W=2, fsync batch, every node an endpoint (kv-bench
#     sends each key to its coordinator: token-aware), reads asking all N and only R
#   - the same with --read-repair blocking, async vs blocking under a lossy replica (10% drop)
#   - quorumkv leaderless in memory (5 nodes, 3 copies) beside one Redis without persistence
#
#   bench/scripts/leaderless.sh [OUT_DIR]     (default: bench/results/leaderless)
#
# Needs etcd-server, etcd-client and redis-server (Debian packages) and python3. Workload: 10k
# keys, 100 B values, zipfian, 50/50 get/put, DUR (20 s) after 2 s warm-up, 16 and 256
# closed-loop clients.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-bench/results/leaderless}
DUR=${DUR:-20s}
WARM=${WARM:-2s}
source bench/scripts/common.sh
prepare_run etcd etcdctl redis-server python3
cleanup() { stop_servers; rm -rf "$TMP"; }
trap cleanup EXIT

# --- etcd 3.4, three members ---
start_etcd
LEADER=$ETCD_LEADER
bench etcd-16 --driver etcd --endpoints "$LEADER" --clients 16
bench etcd-256 --driver etcd --endpoints "$LEADER" --clients 256
stop_servers

# --- quorumkv leaderless: 5 nodes, N=3 R=2 W=2 ---
KV_EPS=127.0.0.1:7501,127.0.0.1:7502,127.0.0.1:7503,127.0.0.1:7504,127.0.0.1:7505
up() { # up NAME EXTRA_CLUSTER_ARGS... [-- NODE_ARGS...]
  local name=$1; shift
  local args=(--nodes 5 --mode leaderless --n 3 --r 2 --w 2 --base-port 7501 --admin-base-port 9501 "$@")
  # One request thread per node: five nodes share two cores with the load generator.
  [[ " ${args[*]} " == *" -- "* ]] && args+=(--worker-threads 1) || args+=(-- --worker-threads 1)
  cluster_up "$name" "${args[@]}"
}
up kv
bench kv-16 --driver kv --endpoints "$KV_EPS" --clients 16
bench kv-256 --driver kv --endpoints "$KV_EPS" --clients 256
stop_servers
# Reads ask R replicas, not all N (Cassandra's way).
up kv-fanq -- --read-fanout quorum
bench kv-fanq-16 --driver kv --endpoints "$KV_EPS" --clients 16
bench kv-fanq-256 --driver kv --endpoints "$KV_EPS" --clients 256
stop_servers
up kv-lossy
# Read repair: one replica loses 10% of what is sent to it, so reads keep finding it stale.
"$BIN/kvctl" --endpoints "$KV_EPS" fault drop n5 0.1 >/dev/null
echo "kvctl fault drop n5 0.1" >> "$OUT/commands.txt"
bench kv-lossy-async-16 --driver kv --endpoints "$KV_EPS" --clients 16
stop_servers
up kv-blocking -- --read-repair blocking
"$BIN/kvctl" --endpoints "$KV_EPS" fault drop n5 0.1 >/dev/null
echo "kvctl fault drop n5 0.1" >> "$OUT/commands.txt"
bench kv-lossy-blocking-16 --driver kv --endpoints "$KV_EPS" --clients 16
stop_servers

# --- in memory: quorumkv (5 nodes, 3 copies of each key) beside one Redis ---
up kv-mem --memory
bench kv-mem-16 --driver kv --endpoints "$KV_EPS" --clients 16
bench kv-mem-256 --driver kv --endpoints "$KV_EPS" --clients 256
stop_servers
start_redis || exit 1
bench redis-16 --driver redis --endpoints 127.0.0.1:6399 --clients 16
bench redis-256 --driver redis --endpoints 127.0.0.1:6399 --clients 256
stop_servers

python3 - "$OUT" <<'PY'
import json, os, sys
sys.path.insert(0, "bench/scripts")
import cpu
out = sys.argv[1]
names = ["etcd-16", "kv-16", "kv-fanq-16", "etcd-256", "kv-256", "kv-fanq-256", "kv-lossy-async-16", "kv-lossy-blocking-16",
         "redis-16", "kv-mem-16", "redis-256", "kv-mem-256"]
d = {}
for name in names:
    p = os.path.join(out, name, "summary.json")
    if os.path.exists(p):
        s = json.load(open(p)); l = s["latency_us"]
        d[name] = (name, s["ops_per_sec"], l["p50"], l["p99"], l["p99_9"], sum(s["errors"].values()), cpu.cells(s))
with open(os.path.join(out, "RESULTS.md"), "w") as f:
    f.write("| run | ops/s | p50 us | p99 us | p99.9 us | errors |" + cpu.HEADER + "\n|---|---:|---:|---:|---:|---:|" + cpu.RULE + "\n")
    for n in names:
        if n in d:
            f.write("| %s | %.0f | %d | %d | %d | %d |%s\n" % d[n])
    def ratio(a, b, label):
        cpu.ratio(f, d, a, b, label, 3)
    ratio("kv-16", "etcd-16", "16 clients, quorumkv leaderless / etcd")
    ratio("kv-256", "etcd-256", "256 clients, quorumkv leaderless / etcd")
    ratio("kv-fanq-16", "etcd-16", "16 clients, quorumkv leaderless --read-fanout quorum / etcd")
    ratio("kv-fanq-256", "etcd-256", "256 clients, quorumkv leaderless --read-fanout quorum / etcd")
    ratio("kv-mem-16", "redis-16", "16 clients, quorumkv in memory (3 copies) / Redis")
    ratio("kv-mem-256", "redis-256", "256 clients, quorumkv in memory (3 copies) / Redis")
    ratio("kv-lossy-blocking-16", "kv-lossy-async-16", "blocking / async read repair, lossy replica")
    f.write("\n\nmachine: %d CPUs; commands in commands.txt\n" % os.cpu_count())
print(open(os.path.join(out, "RESULTS.md")).read())
PY
