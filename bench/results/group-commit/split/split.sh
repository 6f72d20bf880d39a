#!/bin/bash
# split.sh NAME "LEADER_ARGS" "FOLLOWER_ARGS" [CLIENTS]: three leader-follower nodes started by
# hand (W=2, fsync batch, one request thread each) with different kv-node flags for n1 and for
# n2/n3; n1 gets the shorter election timeout, so it leads (the script prints its role). Runs
# kv-bench at n1 for 10 s (2 s warm-up) and prints NAME ops/s p99 µs servers µs/op.
# Run from anywhere in the repository, after `cargo build --release -p kv-node -p kv-bench`.
set -u
cd "$(dirname "$0")/../../../.."
NAME=$1; LA=$2; FA=$3; C=${4:-256}
D=/tmp/lfsplit/$NAME; rm -rf $D /tmp/lfsplit/data; mkdir -p $D
P=n1=127.0.0.1:7601,n2=127.0.0.1:7602,n3=127.0.0.1:7603
pids=()
for i in 1 2 3; do
  if [ $i = 1 ]; then X="--election-timeout 150ms $LA"; else X="--election-timeout 1s --heartbeat-interval 30ms $FA"; fi
  target/release/kvctl node --id n$i --listen 127.0.0.1:760$i --admin-listen 127.0.0.1:960$i --peers $P --mode leader-follower --fsync batch --worker-threads 1 --data-dir /tmp/lfsplit/data/n$i --r 2 --w 2 $X > $D/n$i.log 2>&1 &
  pids+=($!)
done
sleep 2.5
target/release/kvctl --endpoints 127.0.0.1:7601 status | awk 'NR==2{print "n1 role:", $3}'
target/release/kv-bench run --duration 10s --warmup 2s --keys 10000 --value-size 100 --dist zipfian --mix read=50,write=50 --out $D/bench --driver kv --endpoints 127.0.0.1:7601 --clients $C --w 2 --read-from leader --server-pids "$(IFS=,; echo "${pids[*]}")" > $D/bench.log 2>&1
python3 -c "
import json;s=json.load(open('$D/bench/summary.json'));print('$NAME', round(s['ops_per_sec']), s['latency_us']['p99'], round(s['server_cpu']['per_op_us'],1))"
kill "${pids[@]}"; wait 2>/dev/null
