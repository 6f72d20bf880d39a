#!/usr/bin/env bash
# A follower brought back by the leader's snapshot, with large values: what the leader and the
# follower hold in memory while the snapshot crosses, and how long the follower takes.
#
#   bench/scripts/snapshot-catchup.sh OUT [VALUE_BYTES] [-- KV_NODE_FLAGS..]
#
# 3 leader-follower nodes (W=2) under OUT/data. FILL (default 20s) of writes (uniform over KEYS
# keys, default 1000, 16 clients); then a follower is killed (kill -9) and MORE (default 10s) of
# writes compact the leader's log past it; then the follower is started again and the script
# waits until it has applied what the leader has. The leader's peak RSS is reset (clear_refs)
# just before the follower comes back, so its VmHWM is its peak while it sends; the follower's
# process is new, so its VmHWM is its peak from start-up through the install. One line to
# OUT/result.txt; the nodes' logs stay in OUT/data (their data directories go unless
# KEEP_DATA=1). BIN_DIR picks the binaries (default target/release).
set -euo pipefail
out=${1:?usage: snapshot-catchup.sh OUT [VALUE_BYTES] [-- KV_NODE_FLAGS..]}
size=${2:-1048576}
shift $(( $# >= 2 ? 2 : 1 ))
[[ ${1:-} == -- ]] && shift
B=${BIN_DIR:-target/release}
export KV_ENDPOINTS=127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
rm -rf "$out" && mkdir -p "$out"
"$B/kvctl" cluster up --nodes 3 --w 2 --data-dir "$out/data" -- "$@" > "$out/cluster.log" 2>&1 &
cluster=$!
trap 'kill -INT $cluster 2>/dev/null; wait $cluster 2>/dev/null || true' EXIT
for _ in $(seq 300); do grep -q '^Try:' "$out/cluster.log" && break; sleep 0.1; done
load() { # load DURATION NAME
  "$B/kv-bench" run --endpoints "$KV_ENDPOINTS" --clients 16 --duration "$1" --warmup 0s \
    --keys "${KEYS:-1000}" --value-size "$size" --dist uniform --mix write=100 --out "$out/$2" \
    > "$out/$2.log" 2>&1
}
status() { "$B/kvctl" status --output json; }
field() { # field NODE KEY: a node's field in `kvctl status`
  status | python3 -c 'import sys,json; n=[x for x in json.load(sys.stdin)["nodes"] if x["id"]==sys.argv[1]][0]; print(n[sys.argv[2]])' "$1" "$2"
}
pid_of() { pgrep -f -- "node --id $1 " | head -1; }
hwm() { awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$1/status"; }
rss() { awk '/VmRSS/ {print int($2 / 1024)}' "/proc/$1/status"; }

leader_now() { # the leader and its term, once there is one (an election may be under way)
  local l
  for _ in $(seq 100); do
    l=$(status | python3 -c 'import sys,json; print(*[(x["id"], x["term"]) for x in json.load(sys.stdin)["nodes"] if x["role"]=="leader"][:1])' || true)
    [[ -n $l ]] && { echo "$l" | tr -d "(),'"; return; }
    sleep 0.1
  done
  echo "no leader" >&2; exit 1
}

load "${FILL:-20s}" fill
read -r leader _ <<< "$(leader_now)"
[[ -n $leader ]] || exit 1
follower=$(for n in n1 n2 n3; do if [[ $n != "$leader" ]]; then echo $n; fi; done | tail -1)
"$B/kvctl" cluster kill "$follower" > /dev/null
load "${MORE:-10s}" more
sleep 2
# Leadership may have moved during the writes: the leader now is the one that sends.
read -r leader term <<< "$(leader_now)"
[[ -n $leader ]] || exit 1
lpid=$(pid_of "$leader")
applied=$(field "$leader" applied_index)
snap=$(field "$leader" snapshot_index)
snap_bytes=$(stat -c %s "$out/data/$leader"/raft-snapshot-* 2>/dev/null | sort -n | tail -1 || echo 0)
leader_before=$(rss "$lpid")
echo 5 > "/proc/$lpid/clear_refs"
start=$(date +%s.%N)
"$B/kvctl" cluster start "$follower" > /dev/null
fpid=$(pid_of "$follower")
caught=no
for _ in $(seq 1200); do
  a=$(field "$follower" applied_index 2>/dev/null || echo 0)
  [[ $a != None && $a -ge $applied ]] && { caught=yes; break; }
  sleep 0.1
done
read -r leader_end term_end <<< "$(leader_now)"
took=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$start" "$(date +%s.%N)")
sleep 1
leader_peak=$(hwm "$lpid"); follower_peak=$(hwm "$fpid"); follower_after=$(rss "$fpid")
installs=$(grep -c "installed the leader's snapshot" "$out/data/$follower.log" || true)
kill -INT $cluster; wait $cluster 2>/dev/null || true
trap - EXIT
[[ ${KEEP_DATA:-0} == 1 ]] || rm -rf "$out"/data/n*/
echo "value $size B, flags '$*': leader $leader applied $applied, snapshot at $snap of $((snap_bytes / 1048576)) MiB; follower $follower caught up: $caught in ${took} s, snapshots installed $installs; leader RSS ${leader_before} MiB before, peak ${leader_peak} MiB while sending (leader $leader_end in term $term_end at the end, against term $term); follower peak ${follower_peak} MiB, ${follower_after} MiB after" | tee "$out/result.txt"
