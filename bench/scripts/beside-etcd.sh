#!/usr/bin/env bash
# quorumkv beside etcd in alternating rounds: etcd 3.4 (three members) and quorumkv (two
# leaderless clusters, or one leader-follower cluster) are all up at once, and each round
# drives etcd, then each quorumkv cluster, with the same kv-bench workload. leaderless.sh and
# leader-follower.sh measure etcd once, first; on a machine whose speed drifts within
# minutes (this one's does), such a ratio can be far off: leaderless REPEATS run 15 gave
# 2.52x at 16 clients for `--read-fanout quorum`, and three rounds of this script right
# after it 1.92-2.13x (`bench/results/leaderless/beside-etcd-16/`). Here every round gives
# its own ratios, and the summary their medians.
#
#   [MODE=leaderless|leader-follower] [ROUNDS=3] [CLIENTS=16] [CONNS=K] [DUR=20s] [WARM=2s]
#   bench/scripts/beside-etcd.sh OUT_DIR
#
#   CONNS            connections per endpoint, for etcd and quorumkv alike (kv-bench
#                    --connections K x the endpoints a run is given; default: kv-bench's, one
#                    per endpoint, as etcd's clientv3 keeps)
#   CONNS_EACH="1 4" instead of CONNS: every round drives each system once per count, and the
#                    summary gives the ratio at each count and each system's best count
#                    against the other's (one connection suits etcd, more suit quorumkv)
#   FSYNC_DELAY=US   every server's fsync and fdatasync held US µs longer (strace; 4000 for
#                    the 4 ms fsync the issues assume; see common.sh)
#   KV_NODE_ARGS="..."  more kv-node flags for every quorumkv cluster (e.g. "--replica-read
#                    last-durable"); the summary's title names them
#   leaderless       5 nodes, N=3 R=2 W=2, fsync batch: `kv` reads ask all N (the default),
#                    `kv-fanq` reads ask R (`--read-fanout quorum`); kv-bench token-aware
#   leader-follower  3 nodes, W=2, fsync batch, leader reads: `kv` as leader-follower.sh
#                    runs it, `kv-fanq` not run
#
# Workload as in the other scripts: 10k keys, 100 B values, zipfian, 50/50 get/put, closed
# loop. Needs etcd-server, etcd-client (Debian) and python3. OUT_DIR gets commands.txt, each
# run's kv-bench output (etcd-r1/, kv-r1/, ...), and SUMMARY.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
case ${1:-} in ''|-h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 2 ;; esac
OUT=$1
MODE=${MODE:-leaderless}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-16}
DUR=${DUR:-20s}
WARM=${WARM:-2s}
[[ $MODE == leaderless || $MODE == leader-follower ]] || { echo "MODE is leaderless or leader-follower: $MODE" >&2; exit 2; }
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS must be a positive whole number: $ROUNDS" >&2; exit 2; }
[[ $CLIENTS =~ ^[1-9][0-9]*$ ]] || { echo "CLIENTS must be a positive whole number: $CLIENTS" >&2; exit 2; }
CONNS=${CONNS:-}
[[ -z $CONNS || $CONNS =~ ^[1-9][0-9]*$ ]] || { echo "CONNS must be a positive whole number: $CONNS" >&2; exit 2; }
CONNS_EACH=${CONNS_EACH:-}
KV_NODE_ARGS=${KV_NODE_ARGS:-}
[[ -z $CONNS_EACH || $CONNS_EACH =~ ^[1-9][0-9]*( [1-9][0-9]*)*$ ]] || { echo "CONNS_EACH must be whole numbers separated by spaces: $CONNS_EACH" >&2; exit 2; }
[[ -z $CONNS || -z $CONNS_EACH ]] || { echo "CONNS and CONNS_EACH exclude each other" >&2; exit 2; }
source bench/scripts/common.sh
prepare_run etcd etcdctl python3
# Waits for every server to exit, so that a run right after this one finds its ports free.
cleanup() { stop_servers; rm -rf "$TMP"; }
trap cleanup EXIT

start_etcd
[ -n "$ETCD_LEADER" ] || { echo "etcd did not come up:" >&2; cat "$TMP"/e*.log >&2; exit 1; }
ETCD_PIDS=$SERVERS
# up NAME PORT ADMIN_PORT CLUSTER_ARGS... -- NODE_ARGS...: a quorumkv cluster; its pid in LAST.
up() {
  local name=$1 port=$2 aport=$3; shift 3
  cluster_up "$name" --base-port "$port" --admin-base-port "$aport" "$@" --worker-threads 1
}
eps() { seq -s, -f "127.0.0.1:%g" "$1" "$(($1 + $2 - 1))"; }
if [ "$MODE" = leaderless ]; then
  up kv 7501 9501 --nodes 5 --mode leaderless --n 3 --r 2 --w 2 -- $KV_NODE_ARGS
  KV_PID=$LAST; KV_EPS=$(eps 7501 5); KV_ARGS=()
  up kv-fanq 7601 9601 --nodes 5 --mode leaderless --n 3 --r 2 --w 2 -- --read-fanout quorum $KV_NODE_ARGS
  FANQ_PID=$LAST; FANQ_EPS=$(eps 7601 5)
else
  up kv 7401 9401 --nodes 3 --w 2 --r 2 -- $KV_NODE_ARGS
  KV_PID=$LAST; KV_EPS=$(eps 7401 3); KV_ARGS=(--w 2 --read-from leader)
  # The leader's endpoint, as leader-follower.sh drives it.
  KV_EPS=$(kv_leader "$KV_EPS")
  FANQ_PID=
fi

# conns ENDPOINTS: the --connections flag for $per connections per endpoint (nothing when empty).
conns() { connections_flag "$per" "$1"; }
# Runs are named SYSTEM-rROUND, or SYSTEM-cCOUNT-rROUND with CONNS_EACH.
for r in $(seq "$ROUNDS"); do
  for c in ${CONNS_EACH:-one}; do
    per=$CONNS tag=
    [ "$c" = one ] || { per=$c; tag=-c$c; }
    SERVERS=$ETCD_PIDS bench "etcd$tag-r$r" --driver etcd --endpoints "$ETCD_LEADER" --clients "$CLIENTS" $(conns "$ETCD_LEADER")
    SERVERS=$KV_PID bench "kv$tag-r$r" --driver kv --endpoints "$KV_EPS" --clients "$CLIENTS" "${KV_ARGS[@]}" $(conns "$KV_EPS")
    [ -n "$FANQ_PID" ] && SERVERS=$FANQ_PID bench "kv-fanq$tag-r$r" --driver kv --endpoints "$FANQ_EPS" --clients "$CLIENTS" $(conns "$FANQ_EPS")
  done
done

python3 - "$OUT" "$ROUNDS" "$MODE" "$CLIENTS" "$CONNS" "$CONNS_EACH" "${FSYNC_DELAY:-}" "${KV_NODE_ARGS:-}" <<'PY'
import json, os, statistics, sys
out, rounds, mode, clients, conns, each, delay, node_args = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6].split(), sys.argv[7], sys.argv[8]
disk = ", every fsync held %s us longer" % delay if delay else ""
if node_args:
    disk += ", quorumkv with `%s`" % node_args
def run(name):
    p = os.path.join(out, name, "summary.json")
    if not os.path.exists(p):
        return None
    s = json.load(open(p))
    return s["ops_per_sec"], s["latency_us"]["p99"]
def table(tag, title):
    lines = ["# %s beside etcd, %s clients%s, %d alternating rounds%s" % (mode, clients, title, rounds, disk), "",
             "| round | etcd ops/s | kv ops/s | kv / etcd | kv-fanq ops/s | kv-fanq / etcd | p99 us etcd / kv / kv-fanq |",
             "|---|---:|---:|---:|---:|---:|---|"]
    ratios = {"kv": [], "kv-fanq": []}
    for r in range(1, rounds + 1):
        e, k, q = run("etcd%s-r%d" % (tag, r)), run("kv%s-r%d" % (tag, r)), run("kv-fanq%s-r%d" % (tag, r))
        if not e or not k:
            continue
        ratios["kv"].append(k[0] / e[0])
        cells = ["%d" % r, "%.0f" % e[0], "%.0f" % k[0], "%.2fx" % (k[0] / e[0])]
        if q:
            ratios["kv-fanq"].append(q[0] / e[0])
            cells += ["%.0f" % q[0], "%.2fx" % (q[0] / e[0])]
        else:
            cells += ["-", "-"]
        cells.append(" / ".join("%d" % x[1] for x in (e, k, q) if x))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for name, rs in ratios.items():
        if rs:
            lines.append("median %s / etcd: %.2fx (%s)" % (name, statistics.median(rs), ", ".join("%.2fx" % x for x in rs)))
    return lines
if not each:
    lines = table("", ", %s connections per endpoint" % conns if conns else "")
else:
    lines = []
    for c in each:
        lines += table("-c%s" % c, ", %s connection%s per endpoint" % (c, "" if c == "1" else "s")) + [""]
    # Each system at the count that suited it best in that round.
    lines += ["# Each system at its best connection count, round by round", "",
              "| round | etcd ops/s (count) | kv ops/s (count) | kv / etcd |", "|---|---:|---:|---:|"]
    best = []
    for r in range(1, rounds + 1):
        def top(system):
            got = [(run("%s-c%s-r%d" % (system, c, r)), c) for c in each]
            got = [(x[0], c) for x, c in got if x]
            return max(got) if got else None
        e, k = top("etcd"), top("kv")
        if not e or not k:
            continue
        best.append(k[0] / e[0])
        lines.append("| %d | %.0f (%s) | %.0f (%s) | %.2fx |" % (r, e[0], e[1], k[0], k[1], k[0] / e[0]))
    if best:
        lines += ["", "median kv / etcd, each at its best count: %.2fx (%s)" % (statistics.median(best), ", ".join("%.2fx" % x for x in best))]
text = "\n".join(lines) + "\n"
open(os.path.join(out, "SUMMARY.md"), "w").write(text)
print(text)
PY
