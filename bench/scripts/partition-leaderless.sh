#!/usr/bin/env bash
# Two-way partitions of a leaderless cluster, with clients that reach every node: how many
# requests fail. 5 nodes on loopback, N=3 R=W=2, under kv-bench (8 clients, 1,000 keys, 50%
# reads, 50% writes, 1 s deadline, 30 s). Every key's three replicas keep two on one side of
# any 2/3 split, so every key stays readable and writable there; a request fails when it goes
# to a coordinator on the other side. Five partitions per run, at 3, 8, 13, 18 and 23 s, each
# for 2 s: runs 1, 3, 5... cut off n1n2 n1n3 n1n4 n1n5 n2n3, runs 2, 4, 6... n2n4 n2n5 n3n4
# n3n5 n4n5 (all ten 2/3 splits in two runs). Prints, per run, kv-bench's errors and the
# errors counted in each partition's seconds and the second after (from kv-bench's timeline).
#
#   bench/scripts/partition-leaderless.sh OUT_DIR [RUNS] [BIN_DIR...]
#   e.g. bench/scripts/partition-leaderless.sh /tmp/part 4 /tmp/old-build target/release
#
# With several BIN_DIRs (each holding kvctl, kv-node and kv-bench) the runs alternate between
# them, each run's partitions the same for every BIN_DIR (an A/B in one session). Default: 2
# runs of target/release.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: partition-leaderless.sh OUT_DIR [RUNS] [BIN_DIR...]}
RUNS=${2:-2}
shift $(( $# < 2 ? $# : 2 ))
source bench/scripts/common.sh # wait_up, bins_or_build
bins_or_build "$@"
mkdir -p "$OUT"
EPS=127.0.0.1:7721,127.0.0.1:7722,127.0.0.1:7723,127.0.0.1:7724,127.0.0.1:7725
SPLITS=(n1,n2 n1,n3 n1,n4 n1,n5 n2,n3 n2,n4 n2,n5 n3,n4 n3,n5 n4,n5)

one() { # BIN DIR RUN
  local bin=$1 dir=$2 run=$3 data sup bench first
  mkdir -p "$dir"; data=$(mktemp -d)
  "$bin/kvctl" cluster up --nodes 5 --base-port 7721 --admin-base-port 9721 --data-dir "$data" \
    --mode leaderless --n 3 --r 2 --w 2 > "$dir/cluster.out" 2>&1 < /dev/null &
  sup=$!
  wait_up "$dir/cluster.out" || { kill -INT $sup; exit 2; }
  "$bin/kv-bench" run --endpoints "$EPS" --clients 8 --duration 30s --warmup 0s --keys 1000 \
    --mix read=50,write=50 --timeout 1s --out "$dir/bench" > "$dir/bench.out" 2>&1 &
  bench=$!
  first=$(( (run - 1) % 2 * 5 ))
  : > "$dir/faults.log"
  sleep 3
  for k in 0 1 2 3 4; do
    local minority=${SPLITS[$((first + k))]} majority
    majority=$(printf 'n1\nn2\nn3\nn4\nn5\n' | grep -vxF -e "${minority%,*}" -e "${minority#*,}" | paste -sd,)
    echo "$((3 + 5 * k)) partition $minority/$majority" >> "$dir/faults.log"
    "$bin/kvctl" --endpoints "$EPS" fault partition "$minority/$majority" > /dev/null
    sleep 2
    "$bin/kvctl" --endpoints "$EPS" fault heal > /dev/null
    sleep 3
  done
  wait $bench
  kill -INT $sup; wait $sup || true
  rm -rf "$data"
  python3 - "$dir" "$bin" <<'PY'
import csv, sys
d, b = sys.argv[1], sys.argv[2]
errs = {int(r["second"]): int(r["errors"]) for r in csv.DictReader(open(d + "/bench/timeline.csv"))}
parts = []
for line in open(d + "/faults.log"):
    at, _, split = line.split()
    at = int(at)
    # kv-bench's second s covers (s-1, s]; the partition holds from `at` to `at + 2`.
    parts.append(f"{split.split('/')[0]} {sum(errs.get(s, 0) for s in range(at + 1, at + 4))}")
errors = [l.strip() for l in open(d + "/bench.out") if l.startswith("errors:")]
print(f"{b}: {errors[0] if errors else 'errors: none'}; per partition: {', '.join(parts)}")
PY
}

for r in $(seq "$RUNS"); do
  for i in "${!BINS[@]}"; do
    one "${BINS[$i]}" "$OUT/run$r-$i" "$r" | tee -a "$OUT/results.txt"
    sleep 2
  done
done
