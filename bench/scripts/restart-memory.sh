#!/usr/bin/env bash
# A leader-follower node restarted on a data directory with a large snapshot: how long it takes
# to recover its state and what it holds in memory doing so, for each build in turn.
#
#   bench/scripts/restart-memory.sh NODE_DIR BIN_DIR [BIN_DIR..]
#
# NODE_DIR is one node's data directory of a stopped 3-node cluster (e.g. OUT/data/n1 after
# `KEEP_DATA=1 bench/scripts/snapshot-catchup.sh OUT`; its id must be n1). For ROUNDS rounds
# (default 3), each BIN_DIR's kv-node starts alone on a fresh copy of it (its peers are not
# running: it recovers, then waits for them), with the page cache dropped first (root); one line
# per start: the time from start to the log's "replica log recovered", its peak RSS (VmHWM)
# and its RSS one second later. Ports 7101/9201.
set -euo pipefail
src=${1:?usage: restart-memory.sh NODE_DIR BIN_DIR [BIN_DIR..]}
shift
[[ $# -ge 1 ]] || { echo "usage: restart-memory.sh NODE_DIR BIN_DIR [BIN_DIR..]" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for round in $(seq "${ROUNDS:-3}"); do
  for B in "$@"; do
    rm -rf "$work/dir" && cp -r "$src" "$work/dir" && rm -f "$work/dir/LOCK" && sync
    echo 3 > /proc/sys/vm/drop_caches || echo "cannot drop the page cache (not root?)" >&2
    start=$(date +%s%N)
    "$B/kv-node" --id n1 --listen 127.0.0.1:7101 --admin-listen 127.0.0.1:9201 \
      --peers n1=127.0.0.1:7101,n2=127.0.0.1:7102,n3=127.0.0.1:7103 --mode leader-follower \
      --data-dir "$work/dir" --worker-threads 1 2> "$work/node.log" &
    pid=$!
    for _ in $(seq 1200); do grep -q "replica log recovered" "$work/node.log" && break; sleep 0.05; done
    took=$(( ($(date +%s%N) - start) / 1000000 ))
    sleep 1
    hwm=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$pid/status")
    rss=$(awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$pid/status")
    kill -9 "$pid"; wait "$pid" 2>/dev/null || true
    echo "round $round $B: recovered in $took ms, peak $hwm MiB, RSS $rss MiB 1 s later"
  done
done
