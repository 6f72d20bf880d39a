#!/usr/bin/env bash
# A Jepsen-style drill: a 5-node cluster on loopback (kvctl cluster up; NODES=3 in the
# environment for another size, 3 to 9), kv-bench recording
# every operation (8 clients, 20 keys, 1 s deadline; 40% reads, 40% writes, 20% compare-and-
# set, or 50/50 in leaderless mode, which has no compare-and-set) while a nemesis breaks
# something at random every 0.1-0.9 s; then kv-bench check judges the history. Faults, each
# undone before the next:
#   kill   kill -9 a node, start it again 1 s later (same data directory)
#   pause  SIGSTOP a node for 1.0-1.8 s (a GC pause, a stalled VM), then SIGCONT
#   part   partition two nodes from the others for 2 s, then heal
#   drop   drop 30% of the messages to and from a node for 1 s
#   delay  delay the messages to and from a node by 30 ms for 1 s
#   calm   nothing for 1 s
#   step   (with STEP=MS) step a node's wall clock by up to MS ms either way, back 1 s later
#   disk   (with DISK=MS) make every flush of a node's logs 50 to MS ms slower for 1 s (a
#          stalled disk: kvctl fault disk)
#   power  (with POWER=1) the power fails on a node: its fsyncs made 100 ms slower for 0.3 s
#          (so that it holds unsynced writes), then kvctl cluster power (kill -9, and what it
#          had not fsynced is lost); started again 1 s later
#   outage (with POWER=1) the same on every node, one after another (each power failure
#          takes a few ms); all started again 1 s later
#   cut    (with CUT=1) for 2 s, every message from a node to all the others is lost, or
#          every message from all the others to it (kvctl fault cut: one way, and the senders
#          are not told)
#   wipe   (with WIPE=1; leaderless) kill -9 a node and delete its data directory (a lost
#          disk), start it again 1 s later on an empty one, and wait (up to 5 s) until it is
#          refilling or has refilled (logged under the fault); skipped while any node refills
#          or is taken to (a second loss before the first is repaired can take the only copy
#          of a write)
#
#   bench/scripts/nemesis.sh OUT_DIR [SECONDS] [SEED] [-- CLUSTER_UP_ARGS...]
#   e.g. bench/scripts/nemesis.sh /tmp/drill 60 1 -- --mode leaderless --n 3 --r 2 --w 2
#
# Defaults: 60 s, seed 1, `--mode leader-follower --n NODES --w <majority>`; MIX=read=40,write=40,delete=20
# (environment) replaces the operation mix; KEYS=K (environment, default 20) the number of keys
# (more keys: the audit checks the last write of more of them). CLIENTS=C (environment,
# default 8) the number of clients: more than 32 makes a leader answer a commit in slices. DIST=D (environment, default
# zipfian) kv-bench's key distribution: with `latest` and many keys (KEYS=1000000) writes go
# to keys drawn uniformly, so that about nine in ten writes are the last of their key and the audit
# checks each of those at its exact version, and reads go to the keys written last. SKEW=MS (environment; leaderless) sets each node's
# clock up to MS ms ahead or behind (kvctl fault clock, drawn from the seed, applied again after
# every fault) for the versions it gives. STEP=MS (environment) runs every node under
# libfaketime (Debian's faketime package), each with a clock of its own, and adds the step
# fault: the node's real wall clock (which its versions follow; its timers run on its monotonic
# clock) jumps ahead or back, as NTP steps a clock that was far off. DISK=MS (environment)
# adds the disk fault. CUT=1 (environment) adds the one-way cut. WIPE=1 (environment) adds
# the storage loss. BIN=DIR (environment) runs the kvctl, kv-node and kv-bench found there
# instead of target/release (another build, for an A/B). POWER=1 (environment) runs every node under the power-loss emulation
# (kvctl cluster up --power-loss: tests/powerloss, an LD_PRELOAD library journalling each write
# until its file's fsync) and adds the power and outage faults. The same seed gives the same faults in the same
# order (their timing is the machine's). Writes into OUT_DIR: nemesis.log
# (seconds since the start, fault; leader-follower: "  heard N leaders at once: nX" under a
# fault after which a node's kv_leaders_observed rose to 2 or more), bench/ (kv-bench
# summary.json, timeline.csv), check.txt (the verdict), node-logs/ (each node's log,
# gzipped), audit.txt (kvctl cluster audit of every acknowledged write against the logs,
# or in leaderless mode the copies, the stopped nodes leave; a failed audit fails the drill;
# leaderless: also how long the idle cluster took to converge), violation.html
# when there is one, tombstones.txt (leaderless: each node's tombstones purged and awaiting
# repair at the end), and history.jsonl (removed on a
# linearizable verdict unless KEEP_HISTORY=1: it is large). Exit status: kv-bench check's
# (0 linearizable, 1 violation, 2 unknown), or the audit's when it fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
source bench/scripts/common.sh # wait_up
usage() { sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; }
[ $# -ge 1 ] || { usage; exit 2; }
case $1 in -h|--help) usage; exit 0 ;; -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;; esac
OUT=$1; shift
SECS=60; SEED=1
[ $# -gt 0 ] && [ "$1" != "--" ] && { SECS=$1; shift; }
[ $# -gt 0 ] && [ "$1" != "--" ] && { SEED=$1; shift; }
[ $# -gt 0 ] && [ "$1" == "--" ] && shift
CLUSTER=("$@")
NODES=${NODES:-5}
[[ $NODES =~ ^[3-9]$ ]] || { echo "NODES must be 3 to 9: $NODES" >&2; exit 2; }
[ ${#CLUSTER[@]} -gt 0 ] || CLUSTER=(--mode leader-follower --n "$NODES" --w $((NODES / 2 + 1)))
[[ $SECS =~ ^[0-9]+$ && $SECS -ge 10 ]] || { echo "SECONDS must be a whole number, at least 10: $SECS" >&2; exit 2; }
[[ $SEED =~ ^[0-9]+$ ]] || { echo "SEED must be a whole number: $SEED" >&2; exit 2; }
[[ ${KEYS:-20} =~ ^[1-9][0-9]*$ ]] || { echo "KEYS must be a whole number, at least 1: $KEYS" >&2; exit 2; }
DIST=${DIST:-zipfian}
CLIENTS=${CLIENTS:-8}
[[ $CLIENTS =~ ^[1-9][0-9]*$ ]] || { echo "CLIENTS must be a whole number, at least 1: $CLIENTS" >&2; exit 2; }
[[ $DIST =~ ^[a-z-]+(:[0-9.:]+)?$ ]] || { echo "DIST must be a kv-bench --dist: $DIST" >&2; exit 2; }

POWER=${POWER:-0}
[[ $POWER =~ ^[01]$ ]] || { echo "POWER must be 0 or 1: $POWER" >&2; exit 2; }
if [ "$POWER" -eq 1 ]; then
  cargo build --release -q -p kv-node -p kv-bench -p kv-powerloss
else
  cargo build --release -q -p kv-node -p kv-bench
fi
BIN=${BIN:-target/release}
if [ -e "$OUT" ] && [ -n "$(ls -A "$OUT")" ] && [ ! -e "$OUT/commands.txt" ]; then
  echo "$OUT is not empty and not an earlier drill's: give a new directory" >&2; exit 2
fi
rm -rf "$OUT"; mkdir -p "$OUT"
DATA=$(mktemp -d)
EPS=$(seq -s, -f '127.0.0.1:76%02g' 1 "$NODES")
SUP=""
BENCH=""
cleanup() {
  for p in $BENCH $SUP; do kill "$p" 2>/dev/null || true; done
  sleep 1; rm -rf "$DATA"
}
trap cleanup EXIT

STEP=${STEP:-0}
[[ $STEP =~ ^[0-9]+$ ]] || { echo "STEP must be a whole number of ms: $STEP" >&2; exit 2; }
DISK=${DISK:-0}
[[ $DISK =~ ^[0-9]+$ ]] || { echo "DISK must be a whole number of ms: $DISK" >&2; exit 2; }
[ "$DISK" -eq 0 ] || [ "$DISK" -ge 50 ] || { echo "DISK must be at least 50 (ms): $DISK" >&2; exit 2; }
# Faults beyond the six every drill has, in this order (a seed's faults stay as they were).
EXTRA=()
[ "$STEP" -gt 0 ] && EXTRA+=(step)
[ "$DISK" -gt 0 ] && EXTRA+=(disk)
[ "$POWER" -eq 1 ] && EXTRA+=(power outage)
CUT=${CUT:-0}
[[ $CUT =~ ^[01]$ ]] || { echo "CUT must be 0 or 1: $CUT" >&2; exit 2; }
[ "$CUT" -eq 1 ] && EXTRA+=(cut)
WIPE=${WIPE:-0}
[[ $WIPE =~ ^[01]$ ]] || { echo "WIPE must be 0 or 1: $WIPE" >&2; exit 2; }
[ "$WIPE" -eq 1 ] && EXTRA+=(wipe)
CLOCKS=()
if [ "$STEP" -gt 0 ]; then
  # (`|| true`: without a match, ls fails and set -e would end the script before the message)
  LIB=$(ls /usr/lib/*/faketime/libfaketimeMT.so.1 2>/dev/null | head -1 || true)
  [ -n "$LIB" ] || { echo "STEP needs libfaketime: apt-get install faketime" >&2; exit 2; }
  mkdir -p "$DATA/clocks"
  for i in $(seq "$NODES"); do echo "+0" > "$DATA/clocks/n$i"; done
  CLOCKS=(--node-env "LD_PRELOAD=$LIB" --node-env FAKETIME_NO_CACHE=1 --node-env DONT_FAKE_MONOTONIC=1
          --node-env "FAKETIME_TIMESTAMP_FILE=$DATA/clocks/{id}")
fi
# The power-loss library is preloaded beside libfaketime when both are asked for.
[ "$POWER" -eq 1 ] && CLOCKS+=(--power-loss)
UP=("$BIN/kvctl" cluster up --nodes "$NODES" --base-port 7601 --admin-base-port 9601 --data-dir "$DATA" "${CLOCKS[@]}" "${CLUSTER[@]}")
echo "${UP[*]}" > "$OUT/commands.txt"
"${UP[@]}" > "$OUT/cluster.out" 2>&1 &
SUP=$!
wait_up "$OUT/cluster.out" || exit 2

# Leaderless mode has no compare-and-set (it would be refused with FAILED_PRECONDITION).
if [ -z "${MIX:-}" ]; then
  MIX=read=40,write=40,cas=20
  [[ " ${CLUSTER[*]} " == *" leaderless "* ]] && MIX=read=50,write=50
fi
RUN=("$BIN/kv-bench" run --endpoints "$EPS" --clients "$CLIENTS" --duration "${SECS}s" --warmup 0s --keys "${KEYS:-20}"
     --dist "$DIST" --mix "$MIX" --timeout 1s --history "$OUT/history.jsonl" --out "$OUT/bench")
echo "${RUN[*]}" >> "$OUT/commands.txt"
"${RUN[@]}" > "$OUT/bench.out" 2> "$OUT/bench.err" &
BENCH=$!

node() { "$BIN/kvctl" cluster "$1" "$2" --data-dir "$DATA" > /dev/null 2>&1 || true; }
fault() { "$BIN/kvctl" --endpoints "$EPS" fault "$@" > /dev/null 2>&1 || true; }
# The power fails on a node: kill -9, and what it had not fsynced is gone (kvctl cluster
# power). Prints what that was, under the fault.
power() {
  { "$BIN/kvctl" cluster power "$1" --data-dir "$DATA" 2>&1 || true; } \
    | sed -e "s/^.*lost power (kill -9); /lost on $1: /" -e 's/^/  /'
}
RANDOM=$SEED
# Clock offsets (SKEW): drawn once, set again after every fault (heal clears them, and a
# restarted node starts without).
SKEW=${SKEW:-0}
[[ $SKEW =~ ^[0-9]+$ ]] || { echo "SKEW must be a whole number of ms: $SKEW" >&2; exit 2; }
OFFSETS=()
for i in $(seq "$NODES"); do
  [ "$SKEW" -gt 0 ] && o=$(( (RANDOM * 32768 + RANDOM) % (2 * SKEW + 1) - SKEW )) || o=0
  [ "$o" -ge 0 ] && OFFSETS+=("+${o}ms") || OFFSETS+=("${o}ms")
done
skew() {
  [ "$SKEW" -gt 0 ] || return 0
  for i in $(seq "$NODES"); do fault clock "n$i" "${OFFSETS[$((i - 1))]}"; done
}
[ "$SKEW" -gt 0 ] && echo "clocks: $(for i in $(seq "$NODES"); do printf "n%s %s " "$i" "${OFFSETS[$((i - 1))]}"; done)" >> "$OUT/commands.txt"
skew
# Split brain as the nodes hear it (leader-follower): after each fault, a node whose
# kv_leaders_observed rose to 2 or more (it heard two leaders at overlapping times; the metric
# remembers 30 s) gets a line "  heard N leaders at once: nX" under that fault.
HEARD=()
heard() {
  for i in $(seq "$NODES"); do
    v=$({ curl -s --max-time 0.3 "127.0.0.1:$((9600 + i))/metrics" 2>/dev/null || true; } \
        | awk '/^kv_leaders_observed /{print $2}')
    v=${v:-0}
    [ "$v" -ge 2 ] && [ "${HEARD[$i]:-0}" -lt 2 ] && echo "  heard $v leaders at once: n$i"
    HEARD[$i]=$v
  done
}
# Leaderless refills (WIPE): the sum over the nodes of metric $1.
metric_sum() {
  for i in $(seq "$NODES"); do
    { curl -s --max-time 0.3 "127.0.0.1:$((9600 + i))/metrics" 2>/dev/null || true; } \
      | awk -v m="$1" '$1 == m {print $2}'
  done | awk '{s += $1} END {print s + 0}'
}
refilling() { [ "$(metric_sum kv_refilling)" != 0 ] || [ "$(metric_sum kv_peers_refilling)" != 0 ]; }
start=$SECONDS
end=$((SECONDS + SECS - 3))
echo "nemesis for $((SECS - 3)) s (seed $SEED), load for $SECS s: $OUT/nemesis.log"
while [ $SECONDS -lt $end ]; do
  sleep "0.$((RANDOM % 9 + 1))"
  n=n$((RANDOM % NODES + 1))
  at=$(printf "%3d" $((SECONDS - start)))
  k=$((RANDOM % (6 + ${#EXTRA[@]})))
  [ $k -ge 6 ] && k=${EXTRA[$((k - 6))]}
  case $k in
    0) echo "$at kill $n"; node kill $n; sleep 1; node start $n ;;
    1) echo "$at pause $n"; node pause $n; sleep "1.$((RANDOM % 9))"; node resume $n ;;
    2) a=$((RANDOM % NODES + 1)); b=$((a % NODES + 1))
       rest=$(for i in $(seq "$NODES"); do if [ $i != $a ] && [ $i != $b ]; then printf "n%s," $i; fi; done)
       echo "$at part n$a,n$b/${rest%,}"; fault partition "n$a,n$b/${rest%,}"; sleep 2; fault heal ;;
    3) echo "$at drop $n 0.3"; fault drop $n 0.3; sleep 1; fault heal ;;
    4) echo "$at delay $n 30ms"; fault delay $n 30ms; sleep 1; fault heal ;;
    5) echo "$at calm"; sleep 1 ;;
    step) ms=$(( (RANDOM * 32768 + RANDOM) % (2 * STEP + 1) - STEP ))
       by=$(awk -v m="$ms" 'BEGIN { printf "%+.3f", m / 1000 }')
       echo "$at step $n ${by}s"; echo "$by" > "$DATA/clocks/$n"; sleep 1; echo "+0" > "$DATA/clocks/$n" ;;
    power) echo "$at power $n"; fault disk $n 100ms; sleep 0.3; power $n; sleep 1; node start $n ;;
    outage) echo "$at outage"
       for i in $(seq "$NODES"); do fault disk n$i 100ms; done
       sleep 0.3
       for i in $(seq "$NODES"); do power n$i; done
       sleep 1
       for i in $(seq "$NODES"); do node start n$i; done ;;
    cut) others=$(for i in $(seq "$NODES"); do if [ "n$i" != "$n" ]; then printf "n%s," $i; fi; done)
       if [ $((RANDOM % 2)) -eq 0 ]; then from=$n; to=${others%,}; else from=${others%,}; to=$n; fi
       echo "$at cut $from -> $to"; fault cut "$from" "$to"; sleep 2; fault heal ;;
    wipe) if refilling; then echo "$at wipe $n skipped: a node refills"; else
         echo "$at wipe $n"; node kill $n; rm -rf "${DATA:?}/$n"; sleep 1; node start $n
         said="neither refilling nor refilled within 5 s"
         for _ in $(seq 50); do
           m=$({ curl -s --max-time 0.3 "127.0.0.1:$((9600 + ${n#n}))/metrics" 2>/dev/null || true; } \
               | awk '$1 == "kv_refilling" && $2 > 0 {print "refilling"} $1 == "kv_refills_total" && $2 > 0 {print "refilled"}')
           [ -n "$m" ] && { said=$(echo $m); break; }
           sleep 0.1
         done
         echo "  $n $said"
       fi ;;
    disk) ms=$((RANDOM % (DISK - 49) + 50))
       echo "$at disk $n ${ms}ms"; fault disk $n ${ms}ms; sleep 1; fault disk $n 0s ;;
  esac
  skew
  heard
done > "$OUT/nemesis.log"
wait $BENCH || { echo "kv-bench failed:" >&2; cat "$OUT/bench.err" >&2; exit 2; }
rc=0
"$BIN/kv-bench" check "$OUT/history.jsonl" --html "$OUT/violation.html" > "$OUT/check.txt" 2>&1 || rc=$?
[ -s "$OUT/violation.html" ] || rm -f "$OUT/violation.html"
"$BIN/kvctl" --endpoints "$EPS" status > "$OUT/status.txt" 2>&1 || true
# Leaderless tombstones at the end (purged since the node last started; past their grace
# period but kept for want of proof that every replica holds them).
if [[ " ${CLUSTER[*]} " == *" leaderless "* ]]; then
  for i in $(seq "$NODES"); do
    { curl -s --max-time 1 "127.0.0.1:$((9600 + i))/metrics" 2>/dev/null || true; } \
      | awk -v n="n$i" '/^kv_tombstones_(purged_total|awaiting_repair) /{printf "%s %s %s\n", n, $1, $2}'
  done > "$OUT/tombstones.txt"
fi
# Every acknowledged write looked up in what the nodes leave (kvctl cluster audit).
# Leader-follower: in the committed log at its version, or in a rollback file (below a
# majority W). The cluster idles 2 s first, then stops, so that the logs have converged.
audit_rc=0
if [[ " ${CLUSTER[*]} " != *" leaderless "* ]]; then
  W=$((NODES / 2 + 1))
  for ((i = 0; i < ${#CLUSTER[@]} - 1; i++)); do [ "${CLUSTER[$i]}" == "--w" ] && W=${CLUSTER[$((i + 1))]}; done
  sleep 2; kill -TERM "$SUP" 2>/dev/null || true; wait "$SUP" 2>/dev/null || true; SUP=""
  echo "$BIN/kvctl cluster audit $OUT/history.jsonl --data-dir $DATA --w $W" >> "$OUT/commands.txt"
  "$BIN/kvctl" cluster audit "$OUT/history.jsonl" --data-dir "$DATA" --w "$W" > "$OUT/audit.txt" 2>&1 || audit_rc=$?
else
  # Leaderless: some node must hold each acknowledged write at its version or a newer one.
  # The idle cluster gets up to 60 s to converge first (hints delivered, anti-entropy run:
  # every key's newest version on N nodes), which the audit then reports; then it stops.
  N=3
  for ((i = 0; i < ${#CLUSTER[@]} - 1; i++)); do [ "${CLUSTER[$i]}" == "--n" ] && N=${CLUSTER[$((i + 1))]}; done
  converged="not within 60 s"
  for t in $(seq 0 59); do
    if "$BIN/kvctl" cluster audit "$OUT/history.jsonl" --data-dir "$DATA" --n "$N" --converged > /dev/null 2>&1; then
      converged="after $t s idle"; break
    fi
    sleep 1
  done
  kill -TERM "$SUP" 2>/dev/null || true; wait "$SUP" 2>/dev/null || true; SUP=""
  echo "$BIN/kvctl cluster audit $OUT/history.jsonl --data-dir $DATA --n $N" >> "$OUT/commands.txt"
  "$BIN/kvctl" cluster audit "$OUT/history.jsonl" --data-dir "$DATA" --n "$N" > "$OUT/audit.txt" 2>&1 || audit_rc=$?
  echo "replicas converged (every key's newest version on $N nodes): $converged" >> "$OUT/audit.txt"
fi
# The nodes' own logs (roles and terms as they changed, slow fsyncs, rollbacks), to tell
# afterwards what the nemesis log and the verdicts cannot.
mkdir -p "$OUT/node-logs"
for f in "$DATA"/n*.log; do [ -e "$f" ] && gzip -c "$f" > "$OUT/node-logs/$(basename "$f").gz"; done
cat "$OUT/bench.out"
echo "faults: $(awk '$1 ~ /^[0-9]+$/ {print $2}' "$OUT/nemesis.log" | sort | uniq -c | awk '{printf "%s %s, ", $1, $2}' | sed 's/, $//')"
split=$(grep -c '^  heard' "$OUT/nemesis.log" || true)
[[ " ${CLUSTER[*]} " == *" leaderless "* ]] || echo "split brain heard by a node (kv_leaders_observed >= 2): $split time(s)$( [ "$split" -gt 0 ] && echo ", after: $(grep -v -E '^  (lost|kvctl)' "$OUT/nemesis.log" | grep -B1 '^  heard' | grep -v '^  heard' | grep -v '^--' | awk '{print $2}' | sort | uniq -c | awk '{printf "%s %s, ", $1, $2}' | sed 's/, $//')")"
cat "$OUT/check.txt"
[ -e "$OUT/audit.txt" ] && { echo "audit of acknowledged writes against what the nodes hold:"; cat "$OUT/audit.txt"; }
if [ $rc -eq 0 ] && [ $audit_rc -eq 0 ] && [ "${KEEP_HISTORY:-0}" != 1 ]; then rm -f "$OUT/history.jsonl"; fi
# A failed audit fails the drill even when the history is linearizable (a lost write nobody read).
[ $rc -eq 0 ] && [ $audit_rc -ne 0 ] && rc=$((audit_rc == 1 ? 1 : 2))
exit $rc
