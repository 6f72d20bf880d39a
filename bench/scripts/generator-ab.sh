#!/usr/bin/env bash
# Two kv-bench binaries, or two ways of running one, alternating (A B A B ...), against the same
# servers: 3 leader-follower nodes (W=2, leader reads), 5 leaderless nodes (N=3 R=W=2), one
# in-memory node, etcd 3.4 x3 and Redis, each at 16 and 256 closed-loop clients, the common
# workload (10k keys, 100 B, zipfian, 50/50). Shows what a change to the load generator does to
# every system it measures, and to its own CPU.
#
#   GEN_A=FILE GEN_B=FILE [A_CONNS=K] [B_CONNS=K] [PAIRS=2] [DUR=10s] [SYSTEMS="etcd redis"]
#   bench/scripts/generator-ab.sh OUT_DIR
#
#   A_CONNS, B_CONNS  connections per endpoint the side opens (kv-bench --connections K x the
#                     endpoints it is given; default: kv-bench's, one per endpoint)
#
# e.g. git worktree add /tmp/gen-base HEAD~1 && (cd /tmp/gen-base && cargo build --release -p kv-bench)
#      GEN_A=/tmp/gen-base/target/release/kv-bench GEN_B=target/release/kv-bench bench/scripts/generator-ab.sh /tmp/gen-ab
#      GEN_A=target/release/kv-bench GEN_B=target/release/kv-bench B_CONNS=4 bench/scripts/generator-ab.sh /tmp/conns
# The servers are this tree's (target/release). Needs etcd, etcdctl, redis-server, python3, curl.
# OUT_DIR gets every run's kv-bench output (SYSTEM-CLIENTS-SIDE-N/), commands.txt and AB.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:?usage: GEN_A=FILE GEN_B=FILE bench/scripts/generator-ab.sh OUT_DIR}
GEN_A=${GEN_A:?GEN_A=FILE: side A's kv-bench}
GEN_B=${GEN_B:?GEN_B=FILE: side B's kv-bench}
PAIRS=${PAIRS:-2}
A_CONNS=${A_CONNS:-}
B_CONNS=${B_CONNS:-}
for k in "$A_CONNS" "$B_CONNS"; do
  [[ -z $k || $k =~ ^[1-9][0-9]*$ ]] || { echo "A_CONNS and B_CONNS are positive whole numbers: $k" >&2; exit 2; }
done
DUR=${DUR:-10s}
WARM=${WARM:-2s}
source bench/scripts/common.sh
prepare_run etcd etcdctl redis-server python3 curl
cleanup() { stop_servers; rm -rf "$TMP"; }
trap cleanup EXIT

# alternate SYSTEM ARGS...: PAIRS rounds of A then B at 16 and 256 clients.
alternate() {
  local system=$1; shift
  local c i side gen cmd conns endpoints= a
  for a in "$@"; do [[ $a == *:* ]] && endpoints=$a; done
  for c in 16 256; do
    for i in $(seq "$PAIRS"); do
      for side in a b; do
        gen=$GEN_A conns=$A_CONNS; [ $side = b ] && gen=$GEN_B conns=$B_CONNS
        cmd=("$gen" run --duration "$DUR" --warmup "$WARM" --keys 10000 --value-size 100 --dist zipfian
             --mix read=50,write=50 --clients "$c" --out "$OUT/$system-$c-$side-$i" --server-pids "$SERVERS" "$@")
        cmd+=($(connections_flag "$conns" "$endpoints"))
        echo "${cmd[*]}" >> "$OUT/commands.txt"
        "${cmd[@]}" > /dev/null 2>&1
        echo "$system $c clients, $side$i: $(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(round(s["ops_per_sec"]), "ops/s")' "$OUT/$system-$c-$side-$i/summary.json")"
      done
    done
  done
}

# SYSTEMS: which of them to run (default all); a run into an OUT that holds others' results
# summarizes those too.
SYSTEMS=${SYSTEMS:-leader-follower leaderless single-node etcd redis}
want() { [[ " $SYSTEMS " == *" $1 "* ]]; }

if want leader-follower; then
cluster_up lf --nodes 3 --w 2 --r 2 --base-port 7401 --admin-base-port 9401 -- --worker-threads 1
alternate leader-follower --driver kv --endpoints "$(kv_leader 127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403)" --w 2 --read-from leader
stop_servers
fi

if want leaderless; then
cluster_up ll --nodes 5 --mode leaderless --n 3 --r 2 --w 2 --base-port 7501 --admin-base-port 9501 -- --worker-threads 1
alternate leaderless --driver kv --endpoints 127.0.0.1:7501,127.0.0.1:7502,127.0.0.1:7503,127.0.0.1:7504,127.0.0.1:7505
stop_servers
fi

if want single-node; then
start_node single 127.0.0.1:7409 127.0.0.1:9409 --storage memory || exit 1
alternate single-node --driver kv --endpoints 127.0.0.1:7409
stop_servers
fi

if want etcd; then
start_etcd
alternate etcd --driver etcd --endpoints "$ETCD_LEADER"
stop_servers
fi

if want redis; then
start_redis || exit 1
alternate redis --driver redis --endpoints 127.0.0.1:6399
stop_servers
fi

python3 - "$OUT" "$GEN_A $A_CONNS" "$GEN_B $B_CONNS" <<'PY'
import json, os, statistics, sys
out, gen_a, gen_b = sys.argv[1:4]
def side(g):
    g = g.split(" ")
    return f"`{g[0]}`" + (f", {g[1]} connections per endpoint" if len(g) > 1 and g[1] else "")
def runs(system, c, side):
    rs = []
    for d in sorted(os.listdir(out)):
        if d.startswith(f"{system}-{c}-{side}-"):
            s = json.load(open(os.path.join(out, d, "summary.json")))
            rs.append((s["ops_per_sec"], s["latency_us"]["p99"], s["client_cpu"]["per_op_us"], s["server_cpu"]["per_op_us"]))
    return rs
with open(os.path.join(out, "AB.md"), "w") as f:
    f.write(f"A: {side(gen_a)}  \nB: {side(gen_b)}\n\n")
    f.write("| system | clients | A ops/s (each run) | B ops/s (each run) | B / A, medians | generator µs/op, A / B | servers µs/op, A / B | p99 ms, A / B |\n")
    f.write("|---|---:|---|---|---:|---|---|---|\n")
    for system in ["leader-follower", "leaderless", "single-node", "etcd", "redis"]:
        for c in [16, 256]:
            a, b = runs(system, c, "a"), runs(system, c, "b")
            if not a or not b:
                continue
            med = lambda rs, i: statistics.median(r[i] for r in rs)
            f.write(f"| {system} | {c} | {', '.join(f'{r[0]:,.0f}' for r in a)} | {', '.join(f'{r[0]:,.0f}' for r in b)} | "
                    f"{med(b, 0) / med(a, 0):.2f}x | {med(a, 2):.1f} / {med(b, 2):.1f} | {med(a, 3):.1f} / {med(b, 3):.1f} | "
                    f"{med(a, 1) / 1000:.1f} / {med(b, 1) / 1000:.1f} |\n")
    f.write("\nmachine: 2 CPUs; commands in commands.txt\n")
print(open(os.path.join(out, "AB.md")).read())
PY
