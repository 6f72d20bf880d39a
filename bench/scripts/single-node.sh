#!/usr/bin/env bash
# Single-node benchmark: quorumkv (memory and durable) beside Redis, same client, same session.
#
#   bench/scripts/single-node.sh [OUT_DIR]      (default: bench/results/single-node)
#
# Needs redis-server (Debian: apt-get install redis-server) and curl. Every run is
# `kv-bench run` closed loop; the exact command lines land in OUT_DIR/commands.txt and each
# run's summary.json. Runs: 20 s measured after 2 s warm-up, 10k keys, 100 B values, zipfian.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-bench/results/single-node}
DUR=${DUR:-20s}
WARM=${WARM:-2s}
KV_PORT=7301; KV_ADMIN=9301; REDIS_PORT=6391
command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install redis-server" >&2; exit 1; }

cargo build --release -q -p kv-node -p kv-bench
BIN=target/release
mkdir -p "$OUT"
: > "$OUT/commands.txt"
DATA=$(mktemp -d)
LOG=$(mktemp)
cleanup() { pkill -f "kv-node --id bench" 2>/dev/null || true; redis-cli -p $REDIS_PORT shutdown nosave >/dev/null 2>&1 || true; rm -rf "$DATA" "$LOG"; }
trap cleanup EXIT

node() { # node ARGS...: start a fresh kv-node and wait until it is ready
  pkill -f "kv-node --id bench" 2>/dev/null || true; sleep 0.5; rm -rf "$DATA"/*
  echo "$BIN/kv-node --id bench --listen 127.0.0.1:$KV_PORT --admin-listen 127.0.0.1:$KV_ADMIN $*" >> "$OUT/commands.txt"
  $BIN/kv-node --id bench --listen 127.0.0.1:$KV_PORT --admin-listen 127.0.0.1:$KV_ADMIN "$@" 2>"$LOG" &
  SERVERS=$!
  # Ready, and this script's node: another process on the port would answer for it (a node
  # that cannot listen exits within milliseconds).
  for _ in $(seq 100); do
    if curl -sf localhost:$KV_ADMIN/readyz >/dev/null; then
      sleep 0.3; kill -0 $SERVERS 2>/dev/null && return; break
    fi
    sleep 0.1
  done
  echo "kv-node did not start" >&2; cat "$LOG" >&2; exit 1
}
bench() { # bench NAME ARGS...
  local name=$1; shift
  local cmd=("$BIN/kv-bench" run --duration "$DUR" --warmup "$WARM" --keys 10000 --value-size 100 --dist zipfian --out "$OUT/$name" "$@" --server-pids "$SERVERS")
  echo "${cmd[*]}" >> "$OUT/commands.txt"
  echo "== $name: ${cmd[*]}"
  "${cmd[@]}" 2>/dev/null
}
fsync_stats() { # fsync_stats NAME: what group commit did during the run
  curl -s localhost:$KV_ADMIN/metrics | grep -E '^kv_fsync_(duration_seconds|batch_records|gather_seconds)_(sum|count) ' > "$OUT/$1/fsync.txt" || true
}

redis-server --port $REDIS_PORT --save '' --appendonly no --daemonize yes >/dev/null
echo "redis-server --port $REDIS_PORT --save '' --appendonly no" >> "$OUT/commands.txt"
sleep 0.5
SERVERS=$(redis-cli -p $REDIS_PORT info server | tr -d '\r' | awk -F: '/^process_id:/{print $2}')
# Default connections: one per endpoint (both systems); then one per client.
bench redis-16 --driver redis --endpoints 127.0.0.1:$REDIS_PORT --clients 16 --mix read=50,write=50
bench redis-16-conn16 --driver redis --endpoints 127.0.0.1:$REDIS_PORT --clients 16 --connections 16 --mix read=50,write=50

node --storage memory --worker-threads 1
bench kv-memory-16 --endpoints 127.0.0.1:$KV_PORT --clients 16 --mix read=50,write=50
bench kv-memory-16-conn4 --endpoints 127.0.0.1:$KV_PORT --clients 16 --connections 4 --mix read=50,write=50
bench kv-memory-16-conn16 --endpoints 127.0.0.1:$KV_PORT --clients 16 --connections 16 --mix read=50,write=50
node --storage memory
bench kv-memory-16-default-threads --endpoints 127.0.0.1:$KV_PORT --clients 16 --mix read=50,write=50

node --data-dir "$DATA" --fsync batch --worker-threads 1
bench kv-batch-16-mixed --endpoints 127.0.0.1:$KV_PORT --clients 16 --connections 4 --mix read=50,write=50
fsync_stats kv-batch-16-mixed
for fs in batch always; do
  for c in 16 128; do
    node --data-dir "$DATA" --fsync $fs --worker-threads 1
    bench kv-$fs-$c-writes --endpoints 127.0.0.1:$KV_PORT --clients $c --connections 4 --mix read=0,write=100
    fsync_stats kv-$fs-$c-writes
  done
done
# A disk as slow as the issue's (about 4 ms an fsync): every flush made 4 ms slower by fault
# injection. 16 writers, one write each in flight: how close group commit comes to 16 writes
# per flush time.
node --data-dir "$DATA" --fsync batch --worker-threads 1 --enable-fault-injection
$BIN/kvctl --endpoints 127.0.0.1:$KV_PORT fault disk bench 4ms >/dev/null
echo "kvctl --endpoints 127.0.0.1:$KV_PORT fault disk bench 4ms" >> "$OUT/commands.txt"
bench kv-batch-16-writes-disk4ms --endpoints 127.0.0.1:$KV_PORT --clients 16 --connections 4 --mix read=0,write=100
fsync_stats kv-batch-16-writes-disk4ms

# One fsync of a 128-byte append on this disk, for the group-commit bound.
dd if=/dev/zero of="$DATA/dd" bs=128 count=2000 oflag=dsync 2> "$OUT/dd-dsync.txt"
python3 - "$OUT" <<'PY'
import json, os, sys, re
sys.path.insert(0, "bench/scripts")
import cpu
out = sys.argv[1]
rows = []
flush = {}
for name in sorted(os.listdir(out)):
    p = os.path.join(out, name, "summary.json")
    if not os.path.exists(p):
        continue
    s = json.load(open(p))
    l = s["latency_us"]
    f = os.path.join(out, name, "fsync.txt")
    extra = ""
    if os.path.exists(f):
        m = {k: float(v) for k, v in (line.split() for line in open(f) if line.strip())}
        n = m.get("kv_fsync_batch_records_count", 0) or 1
        flush_ms = 1000 * m.get("kv_fsync_duration_seconds_sum", 0) / max(m.get("kv_fsync_duration_seconds_count", 0), 1)
        flush[name] = flush_ms
        extra = "%.0f writes/fsync, fsync mean %.3f ms" % (m.get("kv_fsync_batch_records_sum", 0) / n, flush_ms)
        if m.get("kv_fsync_gather_seconds_sum", 0) / n > 1e-6:
            extra += ", waited for writers %.3f ms a flush" % (1000 * m["kv_fsync_gather_seconds_sum"] / n)
    errs = sum(s["errors"].values())
    rows.append((name, s["ops_per_sec"], l["p50"], l["p99"], l["p99_9"], l["max"], errs, extra, cpu.cells(s)))
dd = open(os.path.join(out, "dd-dsync.txt")).read().strip().splitlines()[-1]
secs = float(re.search(r"copied, ([0-9.]+) s", dd).group(1))
with open(os.path.join(out, "RESULTS.md"), "w") as f:
    f.write("| run | ops/s | p50 us | p99 us | p99.9 us | max us | errors | group commit |" + cpu.HEADER + "\n|---|---:|---:|---:|---:|---:|---:|---|" + cpu.RULE + "\n")
    for r in rows:
        f.write("| %s | %.0f | %d | %d | %d | %d | %d | %s |%s\n" % r)
    ops = {r[0]: r[1] for r in rows}
    for a, b in [("kv-memory-16", "redis-16"), ("kv-memory-16-conn16", "redis-16-conn16")]:
        if a in ops and b in ops:
            f.write("\n%s / %s: %.2fx throughput" % (a, b, ops[a] / ops[b]))
    f.write("\n")
    for name in ["kv-batch-16-writes", "kv-batch-16-writes-disk4ms"]:
        if name in ops and flush.get(name):
            bound = 16 / flush[name] * 1000
            f.write("\n%s: %.0f writes/s = %.0f%% of 16 / fsync time (%.3f ms: %.0f/s)" % (name, ops[name], 100 * ops[name] / bound, flush[name], bound))
    f.write("\n")
    f.write("\nfsync of one 128 B append (dd oflag=dsync, 2000 writes): %.3f ms\n" % (secs / 2000 * 1000))
    f.write("machine: %d CPUs; commands in commands.txt\n" % os.cpu_count())
print(open(os.path.join(out, "RESULTS.md")).read())
PY
