#!/usr/bin/env bash
# The leader cut off from the majority: how long the cluster takes no write, and how many
# requests fail meanwhile. A 3-node leader-follower cluster on loopback (W=2, default timers:
# election timeout 150 ms, heartbeats every 30 ms) under kv-bench (8 clients, 20 keys, 40% reads,
# 40% writes, 20% compare-and-set, 1 s deadline, 20 s); at 4 s and at 12 s the leader of the
# moment is partitioned from the other two for 2 s. Prints, per run, kv-bench's errors and the
# two longest gaps between acknowledged writes (one per isolation), from the recorded history.
#
#   bench/scripts/isolate-leader.sh OUT_DIR [RUNS] [BIN_DIR...]
#   e.g. bench/scripts/isolate-leader.sh /tmp/isolate 4 /tmp/old-build target/release
#
# With several BIN_DIRs (each holding kvctl, kv-node and kv-bench) the runs alternate between
# them (an A/B in one session). Default: 3 runs of target/release.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: isolate-leader.sh OUT_DIR [RUNS] [BIN_DIR...]}
RUNS=${2:-3}
shift $(( $# < 2 ? $# : 2 ))
source bench/scripts/common.sh # wait_up, bins_or_build
bins_or_build "$@"
mkdir -p "$OUT"
EPS=127.0.0.1:7701,127.0.0.1:7702,127.0.0.1:7703

one() { # BIN DIR
  local bin=$1 dir=$2 data sup bench
  mkdir -p "$dir"; data=$(mktemp -d)
  "$bin/kvctl" cluster up --nodes 3 --base-port 7701 --admin-base-port 9701 --data-dir "$data" \
    --mode leader-follower --n 3 --w 2 > "$dir/cluster.out" 2>&1 < /dev/null &
  sup=$!
  wait_up "$dir/cluster.out" || { kill -INT $sup; exit 2; }
  "$bin/kv-bench" run --endpoints "$EPS" --clients 8 --duration 20s --warmup 0s --keys 20 \
    --mix read=40,write=40,cas=20 --timeout 1s --history "$dir/history.jsonl" --out "$dir/bench" \
    > "$dir/bench.out" 2>&1 &
  bench=$!
  for _ in 1 2; do
    sleep 4
    local leader others
    leader=$("$bin/kvctl" --endpoints "$EPS" --output json status \
      | python3 -c 'import json,sys; print([n["id"] for n in json.load(sys.stdin)["nodes"] if n["role"]=="leader"][0])')
    others=$(printf 'n1\nn2\nn3\n' | grep -v "^$leader$" | paste -sd,)
    echo "$(date +%T.%N) partition $leader/$others" >> "$dir/faults.log"
    "$bin/kvctl" --endpoints "$EPS" fault partition "$leader/$others" > /dev/null
    sleep 2
    "$bin/kvctl" --endpoints "$EPS" fault heal > /dev/null
  done
  wait $bench
  kill -INT $sup; wait $sup || true
  rm -rf "$data"
  python3 - "$dir" "$bin" <<'PY'
import json, sys
d, b = sys.argv[1], sys.argv[2]
ends = sorted(r["end_ns"] for r in map(json.loads, open(d + "/history.jsonl"))
              if r["op"] in ("write", "cas") and r["outcome"] == "ok")
gaps = sorted((y - x) / 1e6 for x, y in zip(ends, ends[1:]))[-2:]
errors = [l.strip() for l in open(d + "/bench.out") if l.startswith("errors:")]
print(f"{b}: {errors[0] if errors else 'errors: none'}; longest write gaps {gaps[0]:.0f} and {gaps[1]:.0f} ms")
PY
  rm -f "$dir/history.jsonl"
}

for r in $(seq "$RUNS"); do
  for i in "${!BINS[@]}"; do
    one "${BINS[$i]}" "$OUT/run$r-$i" | tee -a "$OUT/results.txt"
    sleep 2
  done
done
