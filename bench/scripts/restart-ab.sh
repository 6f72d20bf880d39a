#!/usr/bin/env bash
# A/B of a full restart with a long log: runs the real-process test
# `a_long_log_committed_at_once_after_a_restart_keeps_its_first_leader` ROUNDS times against each
# of two kv-node binaries, alternating, and reads the node logs after the restart: how many
# leaders were elected (1 is the goal) and the longest pass of a replica's loop the node logged
# as slower than a heartbeat interval.
#
#   bench/scripts/restart-ab.sh OLD_KV_NODE NEW_KV_NODE ROUNDS OUT
#
# Build both first (cargo build --release -p kv-node, in two checkouts or target dirs) and the
# test once: cargo test --release -p kv-tests --test leader_follower --no-run.
set -euo pipefail
if [[ $# -ne 4 ]]; then
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
old=$1 new=$2 rounds=$3 out=$4
cd "$(dirname "$0")/../.."
exe=$(ls -t target/release/deps/leader_follower-* | grep -v '\.d$' | head -1)
[[ -x $exe ]] || { echo "no test executable: cargo test --release -p kv-tests --test leader_follower --no-run" >&2; exit 2; }
keep=$(mktemp)
cp target/release/kv-node "$keep"
trap 'cp "$keep" target/release/kv-node; rm -f "$keep"' EXIT
logs=$(mktemp -d)
for r in $(seq 1 "$rounds"); do
    for v in old new; do
        bin=$old
        [[ $v == new ]] && bin=$new
        cp "$bin" target/release/kv-node
        rm -f "$logs"/*.log
        res=$( (TMPDIR=$logs KV_KEEP_LOGS=1 timeout 300 "$exe" --test-threads 1 a_long_log 2>&1 || true) |
            awk '/^test result/ {print $3}')
        elections=0 slowest=0
        for f in "$logs"/kv-node-*.log; do
            read -r e s < <(sed 's/\x1b\[[0-9;]*m//g' "$f" | awk '
                /entries=400000/ {on = 1}
                on && /role="leader"/ {n++}
                on && match($0, /took_ms=[0-9.]+/) {v = substr($0, RSTART + 8, RLENGTH - 8) + 0; if (v > mx) mx = v}
                END {printf "%d %.1f\n", n, mx}')
            elections=$((elections + e))
            slowest=$(awk -v a="$slowest" -v b="$s" 'BEGIN {print (b > a) ? b : a}')
        done
        echo "round=$r build=$v test=${res:-none} elections_after_restart=$elections max_slow_pass_ms=$slowest" | tee -a "$out"
    done
done
rm -rf "$logs"
