#!/usr/bin/env bash
# Leader-follower beside etcd: 3 quorumkv nodes (W=2, leader reads, fsync batch) and a 3-member
# etcd 3.4 cluster on loopback, the same kv-bench client and workload, one session.
#
#   bench/scripts/leader-follower.sh [OUT_DIR]     (default: bench/results/leader-follower)
#
# Needs etcd (Debian: apt-get install etcd-server etcd-client) and python3. Both systems get
# their leader's endpoint only (a follower would forward or redirect). Workload: 10k keys,
# 100 B values, zipfian, 50/50 get/put, 20 s after 2 s warm-up, 16 and 256 closed-loop clients;
# then quorumkv at 256 clients again with a 2 ms group commit window (`kv-256-gcw2ms`; since
# the proposal window, on by default, it adds little: REPEATS.md, runs 19 and 20).
# Both systems also at 16 clients with one connection per client (`-conn16`) and at 256 with
# four connections (`-conn4`: generator and leader then take turns less, README, Benchmarks).
# Last, the ceiling: one quorumkv node in memory with nothing replicated, driven the same way.
# Needs curl.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-bench/results/leader-follower}
DUR=${DUR:-20s}
WARM=${WARM:-2s}
source bench/scripts/common.sh
prepare_run etcd etcdctl python3 curl
cleanup() { stop_servers; rm -rf "$TMP"; }
trap cleanup EXIT

# --- etcd 3.4, three members ---
start_etcd
LEADER=$ETCD_LEADER
bench etcd-16 --driver etcd --endpoints "$LEADER" --clients 16
bench etcd-256 --driver etcd --endpoints "$LEADER" --clients 256
# One connection per client instead of one per endpoint (the default).
bench etcd-16-conn16 --driver etcd --endpoints "$LEADER" --clients 16 --connections 16
bench etcd-256-conn4 --driver etcd --endpoints "$LEADER" --clients 256 --connections 4
stop_servers

# --- quorumkv, three nodes ---
# One request thread per node, as in leaderless.sh: three nodes share two cores with the load
# generator (16 clients: 12.6-13.3k ops/s against 11.3-12.3k with the default two threads,
# alternating pairs; REPEATS.md run 9).
KV_EPS=127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403
cluster_up kv --nodes 3 --w 2 --r 2 --base-port 7401 --admin-base-port 9401 -- --worker-threads 1
LEADER=$(kv_leader $KV_EPS)
echo "quorumkv leader: $LEADER"
bench kv-16 --driver kv --endpoints "$LEADER" --clients 16 --w 2 --read-from leader
bench kv-256 --driver kv --endpoints "$LEADER" --clients 256 --w 2 --read-from leader
bench kv-16-conn16 --driver kv --endpoints "$LEADER" --clients 16 --w 2 --read-from leader --connections 16
bench kv-256-conn4 --driver kv --endpoints "$LEADER" --clients 256 --w 2 --read-from leader --connections 4
stop_servers

# --- the same at 256 clients with a 2 ms group commit window (kv-node --group-commit-window):
# fewer fsyncs and less CPU per write under many writers; it costs 16 clients 13% (README,
# Storage, "Group commit window"), so it is not the default ---
cluster_up kv-gcw --nodes 3 --w 2 --r 2 --base-port 7401 --admin-base-port 9401 -- --worker-threads 1 --group-commit-window 2ms
LEADER=$(kv_leader $KV_EPS)
bench kv-256-gcw2ms --driver kv --endpoints "$LEADER" --clients 256 --w 2 --read-from leader
stop_servers

# --- the ceiling: one quorumkv node in memory (no replication, no fsync), same client ---
# What the gRPC server and this client reach on this machine with nothing replicated: a
# replicated cluster's throughput cannot pass it.
start_node ceiling 127.0.0.1:7409 127.0.0.1:9409 --storage memory || exit 1
bench ceiling-16 --driver kv --endpoints 127.0.0.1:7409 --clients 16
bench ceiling-256 --driver kv --endpoints 127.0.0.1:7409 --clients 256

python3 - "$OUT" <<'PY'
import json, os, sys
sys.path.insert(0, "bench/scripts")
import cpu
out = sys.argv[1]
rows = []
for name in ["etcd-16", "kv-16", "etcd-256", "kv-256", "kv-256-gcw2ms", "etcd-16-conn16", "kv-16-conn16", "etcd-256-conn4", "kv-256-conn4", "ceiling-16", "ceiling-256"]:
    p = os.path.join(out, name, "summary.json")
    if os.path.exists(p):
        s = json.load(open(p)); l = s["latency_us"]
        rows.append((name, s["ops_per_sec"], l["p50"], l["p99"], l["p99_9"], sum(s["errors"].values()), cpu.cells(s)))
with open(os.path.join(out, "RESULTS.md"), "w") as f:
    f.write("| run | ops/s | p50 us | p99 us | p99.9 us | errors |" + cpu.HEADER + "\n|---|---:|---:|---:|---:|---:|" + cpu.RULE + "\n")
    for r in rows:
        f.write("| %s | %.0f | %d | %d | %d | %d |%s\n" % r)
    d = {r[0]: r for r in rows}
    for c in ("16", "256", "16-conn16", "256-conn4"):
        if "kv-"+c in d and "etcd-"+c in d:
            f.write("\n%s clients: quorumkv / etcd throughput = %.2fx, p99 %d vs %d us" % (c, d["kv-"+c][1] / d["etcd-"+c][1], d["kv-"+c][3], d["etcd-"+c][3]))
    # Each system at whichever of its connection counts did best in this run: the same client
    # and workload, each tuned as its users would.
    for c, conns in (("16", ("16", "16-conn16")), ("256", ("256", "256-conn4"))):
        kv = [d["kv-"+x] for x in conns if "kv-"+x in d]
        et = [d["etcd-"+x] for x in conns if "etcd-"+x in d]
        if kv and et:
            k, e = max(kv, key=lambda r: r[1]), max(et, key=lambda r: r[1])
            f.write("\n%s clients, each system at its best connection count: quorumkv (%s) / etcd (%s) throughput = %.2fx, p99 %d vs %d us" % (c, k[0], e[0], k[1] / e[1], k[3], e[3]))
    if "kv-256-gcw2ms" in d and "etcd-256" in d:
        f.write("\n256 clients, --group-commit-window 2ms: quorumkv / etcd throughput = %.2fx, p99 %d vs %d us" % (d["kv-256-gcw2ms"][1] / d["etcd-256"][1], d["kv-256-gcw2ms"][3], d["etcd-256"][3]))
    for c in ("16", "256"):
        if "ceiling-"+c in d and "etcd-"+c in d:
            f.write("\nceiling at %s clients (one in-memory node, nothing replicated): %.0f ops/s = %.2fx etcd" % (c, d["ceiling-"+c][1], d["ceiling-"+c][1] / d["etcd-"+c][1]))
    f.write("\n\nmachine: %d CPUs; commands in commands.txt\n" % os.cpu_count())
print(open(os.path.join(out, "RESULTS.md")).read())
PY
