#!/usr/bin/env bash
# Large values on a 5-node leader-follower cluster: throughput, errors, elections, the largest
# node's RSS over time and the data on disk, for one kv-node configuration.
#
#   bench/scripts/large-values.sh OUT [VALUE_BYTES] [-- KV_NODE_FLAGS..]
#
# DURATION (default 60s) and CLIENTS (16) from the environment. Writes OUT/bench (kv-bench's
# output), OUT/rss.txt (the largest node's RSS in KiB, once a second), OUT/disk.txt (the data
# directories' size in MiB, once a second), OUT/data (the node logs)
# and OUT/result.txt (one line). Example, with and without the byte
# limit on the log:
#   bench/scripts/large-values.sh /tmp/lv-with 1048576
#   bench/scripts/large-values.sh /tmp/lv-without 1048576 -- --snapshot-bytes 1000000000000000
set -euo pipefail
out=${1:?usage: large-values.sh OUT [VALUE_BYTES] [-- KV_NODE_FLAGS..]}
size=${2:-1048576}
shift $(( $# >= 2 ? 2 : 1 ))
[[ ${1:-} == -- ]] && shift
B=${BIN_DIR:-target/release}
export KV_ENDPOINTS=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003,127.0.0.1:7004,127.0.0.1:7005
rm -rf "$out" && mkdir -p "$out"
"$B/kvctl" cluster up --data-dir "$out/data" -- "$@" > "$out/cluster.log" 2>&1 &
cluster=$!
trap 'kill -INT $cluster 2>/dev/null; wait $cluster 2>/dev/null || true' EXIT
sleep 4
( while sleep 1; do
    ps -o rss= -C kvctl | sort -n | tail -1
    du -sm "$out/data" | cut -f1 >&3
  done > "$out/rss.txt" 3> "$out/disk.txt" ) &
monitor=$!
"$B/kv-bench" run --endpoints "$KV_ENDPOINTS" --clients "${CLIENTS:-16}" --duration "${DURATION:-60s}" \
  --warmup 1s --keys 1000 --value-size "$size" --mix read=50,write=50 --out "$out/bench" \
  > "$out/bench.log" 2>&1
kill $monitor 2>/dev/null || true
oom=$(grep -c 'signal: 9' "$out/cluster.log" || true)
# A node the OOM killer took shows as down (no term).
terms=$("$B/kvctl" status --output json | python3 -c 'import sys,json; d=json.load(sys.stdin); n=d["nodes"]; print(sorted({x["term"] for x in n if x["term"] is not None}), "nodes down:", sum(x["role"] == "down" for x in n))' || true)
disk=$(du -sm "$out/data" | cut -f1)
kill -INT $cluster; wait $cluster 2>/dev/null || true
trap - EXIT
# Without the byte limit the logs grow by about a third of a GB a second: the nodes' data
# directories go once measured (KEEP_DATA=1 keeps them); their logs (OUT/data/n*.log) stay.
[[ ${KEEP_DATA:-0} == 1 ]] || rm -rf "$out"/data/n*/
ops=$(awk '/^all/ {print $2 " ops/s, p99 " $6 " us"}' "$out/bench.log")
errors=$(grep '^errors' "$out/bench.log" || true)
rss=$(sort -n "$out/rss.txt" | tail -1)
disk_max=$(sort -n "$out/disk.txt" | tail -1)
leaders=$(cat "$out"/data/n*.log | grep -c 'role="leader"' || true)
echo "value $size B, flags '$*': $ops; $errors; terms $terms; leaders elected $leaders; largest node RSS $((rss / 1024)) MiB; nodes killed by a signal (the OOM killer) $oom; data ${disk} MiB at the end, at most ${disk_max} MiB" | tee "$out/result.txt"
