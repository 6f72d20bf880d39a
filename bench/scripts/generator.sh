#!/usr/bin/env bash
# The load generator's own capacity: open-loop runs on ONE core (taskset -c 0, the generator's
# runtime and its schedule thread) against a trivial server on the other core (Redis without
# persistence), at rising rates; reports throughput achieved and the schedule error (actual
# minus intended send time).
#
#   bench/scripts/generator.sh [OUT_DIR]     (default: bench/results/generator)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-bench/results/generator}
command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install redis-server" >&2; exit 1; }
cargo build --release -q -p kv-bench
mkdir -p "$OUT"
: > "$OUT/commands.txt"
taskset -c 1 redis-server --port 6398 --save "" --appendonly no >/dev/null 2>&1 &
REDIS=$!
trap 'kill $REDIS 2>/dev/null || true' EXIT
sleep 1
for rate in 25000 50000 80000 100000; do
  cmd=(taskset -c 0 target/release/kv-bench run --driver redis --endpoints 127.0.0.1:6398 --rate $rate
       --clients 256 --threads 1 --duration 10s --warmup 2s --keys 10000 --value-size 100
       --dist zipfian --mix read=50,write=50 --out "$OUT/rate-$rate")
  echo "${cmd[*]}" >> "$OUT/commands.txt"
  echo "== rate $rate"
  "${cmd[@]}" 2>/dev/null | grep -E "^all|^service|send delay"
done
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = []
for d in sorted(os.listdir(out)):
    p = os.path.join(out, d, "summary.json")
    if os.path.exists(p):
        s = json.load(open(p))
        e = s["schedule_error_us"]
        rows.append((s["config"]["rate"], s["ops_per_sec"], e["p50"], e["p99"], e["max"], s["latency_us"]["p99"]))
rows.sort()
with open(os.path.join(out, "RESULTS.md"), "w") as f:
    f.write("Generator on one core (taskset -c 0), Redis on the other; 256 clients, 50/50 zipfian.\n\n")
    f.write("| intended ops/s | achieved ops/s | schedule error p50 us | p99 us | max us | latency p99 us |\n|---:|---:|---:|---:|---:|---:|\n")
    for r in rows:
        f.write("| %d | %.0f | %d | %d | %d | %d |\n" % r)
print(open(os.path.join(out, "RESULTS.md")).read())
PY
