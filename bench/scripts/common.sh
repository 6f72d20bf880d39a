# Shared by the benchmark scripts. Source it after setting OUT, DUR and WARM; then
# `prepare_run` sets BIN, TMP and PIDS (or set them yourself).

# FSYNC_DELAY=US, if set: every server that start_etcd, cluster_up and start_node start runs
# under strace, which holds each of its fsync and fdatasync calls US microseconds
# after the disk has answered: a disk whose flush takes US µs longer (4000: the 4 ms fsync the
# issues assume), with no limit on how many flushes are under way at once. Only those two
# calls stop the server (seccomp-bpf), so the rest runs at full speed; etcd, a Go binary that
# makes its system calls without libc, is held the same way as quorumkv. strace (Debian:
# strace) is a child of the script, each server a child of its strace (`-I 2`: a signal to
# strace reaches the server, as it would without it): CPU accounting by pid takes in strace's
# share (a few µs per flush).
delay_fsync() {
  [ -n "${FSYNC_DELAY:-}" ] || return 0
  [[ $FSYNC_DELAY =~ ^[0-9]+$ ]] || { echo "FSYNC_DELAY is microseconds, a whole number: $FSYNC_DELAY" >&2; exit 2; }
  command -v strace >/dev/null || { echo "FSYNC_DELAY needs strace (Debian package: strace)" >&2; exit 1; }
  WRAP=(strace -I 2 -f -qq --seccomp-bpf -o /dev/null -e trace=fsync,fdatasync
        -e "inject=fsync,fdatasync:delay_exit=$FSYNC_DELAY")
}
WRAP=()

# prepare_run TOOL...: fails with the Debian packages to install unless every TOOL is on the
# PATH; builds kv-node and kv-bench; sets BIN; makes $OUT with an empty commands.txt; sets
# TMP (a new temporary directory) and PIDS (empty: the servers a script starts go there).
prepare_run() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || {
      echo "$t not found (Debian packages: etcd-server etcd-client redis-server python3 curl util-linux)" >&2
      exit 1
    }
  done
  delay_fsync
  cargo build --release -q -p kv-node -p kv-bench
  BIN=target/release
  mkdir -p "$OUT"
  : > "$OUT/commands.txt"
  TMP=$(mktemp -d)
  PIDS=()
}

# stop_servers: stops every server in PIDS (SIGTERM) and waits, up to 10 s each, until they and
# their descendants (the nodes of a cluster; a server under FSYNC_DELAY's strace, which exits
# before its server does) have exited, so that the next server finds its ports free. Empties
# PIDS.
stop_servers() {
  local all=() p _
  for p in "${PIDS[@]}"; do all+=("$p" $(descendants "$p")); done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${all[@]}"; do for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; done
  PIDS=()
}
descendants() { local c; for c in $(pgrep -P "$1"); do echo "$c"; descendants "$c"; done; }

# bench NAME ARGS...: one kv-bench run of the common workload into $OUT/NAME, logged in
# $OUT/commands.txt (10k keys, 100 B values, zipfian, 50/50 get/put). With SERVERS set (pids,
# comma-separated), their CPU over the run goes into its summary.json beside the generator's.
bench() {
  local name=$1; shift
  local cmd=("$BIN/kv-bench" run --duration "$DUR" --warmup "$WARM" --keys 10000 --value-size 100 --dist zipfian --mix read=50,write=50 --out "$OUT/$name" "$@")
  [ -n "${SERVERS:-}" ] && cmd+=(--server-pids "$SERVERS")
  echo "${cmd[*]}" >> "$OUT/commands.txt"
  echo "== $name"
  "${cmd[@]}" 2>/dev/null | sed -n 1,2p
}

# wait_up FILE: waits up to 30 s for `kvctl cluster up`, whose output goes to FILE, to say it
# is up (its `Try:` line); fails with FILE's content on stderr if it did not come up.
wait_up() {
  for _ in $(seq 300); do grep -q '^Try:' "$1" && return; sleep 0.1; done
  echo "the cluster did not come up:" >&2; cat "$1" >&2; return 1
}

# bins_or_build DIR...: sets BINS to the given build directories (each holding kvctl, kv-node
# and kv-bench; several make an A/B in one session), or without any builds this tree and sets
# BINS to target/release.
bins_or_build() {
  BINS=("$@")
  [ ${#BINS[@]} -gt 0 ] || { cargo build --release -q -p kv-node -p kv-bench; BINS=(target/release); }
}

# cluster_up NAME ARGS...: `kvctl cluster up --fsync batch --data-dir $TMP/NAME ARGS...` in
# the background, logged in $OUT/commands.txt and its output in $TMP/NAME.out; waits until it
# is up. Its pid goes to PIDS, and to SERVERS and LAST (for bench and the caller).
cluster_up() {
  local name=$1; shift
  local cmd=("${WRAP[@]}" "$BIN/kvctl" cluster up --fsync batch --data-dir "$TMP/$name" "$@")
  echo "${cmd[*]}" >> "$OUT/commands.txt"
  "${cmd[@]}" > "$TMP/$name.out" 2>&1 &
  PIDS+=($!)
  SERVERS=$!
  LAST=$!
  wait_up "$TMP/$name.out" || exit 1
}

# kv_leader ENDPOINTS: prints the address of the leader-follower node that leads, as
# `kvctl status` reports it (scripts drive the leader's endpoint, as etcd's).
kv_leader() {
  "$BIN/kvctl" --endpoints "$1" --output json status | python3 -c '
import json,sys
print([n["addr"] for n in json.load(sys.stdin)["nodes"] if n["role"] == "leader"][0])'
}

# start_etcd: a 3-member etcd cluster on loopback; sets ETCD_LEADER to the leader's client
# endpoint (host:port). Its pids go to PIDS.
start_etcd() {
  local cluster="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
  for i in 1 2 3; do
    local cmd=("${WRAP[@]}" etcd --name e$i --data-dir "$TMP/e$i" --listen-client-urls http://127.0.0.1:2379$i
         --advertise-client-urls http://127.0.0.1:2379$i --listen-peer-urls http://127.0.0.1:2380$i
         --initial-advertise-peer-urls http://127.0.0.1:2380$i --initial-cluster "$cluster"
         --initial-cluster-state new --log-level error)
    echo "${cmd[*]}" >> "$OUT/commands.txt"
    "${cmd[@]}" 2>"$TMP/e$i.log" &
    PIDS+=($!)
  done
  local eps=127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793
  for _ in $(seq 100); do ETCDCTL_API=3 etcdctl --endpoints $eps endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
  ETCD_LEADER=$(ETCDCTL_API=3 etcdctl --endpoints $eps endpoint status -w json | python3 -c '
import json,sys
for s in json.load(sys.stdin):
    if s["Status"]["leader"] == s["Status"]["header"]["member_id"]:
        print(s["Endpoint"].replace("http://", ""))')
  echo "etcd leader: $ETCD_LEADER"
  SERVERS=$(IFS=,; echo "${PIDS[*]: -3}")
}

# connections_flag PER ENDPOINTS: kv-bench's --connections for PER connections to each of the
# comma-separated ENDPOINTS (nothing when PER is empty: the default, one per endpoint).
connections_flag() {
  [ -n "$1" ] && echo "--connections $(( $1 * ($(tr -cd , <<< "$2" | wc -c) + 1) ))"
  true
}

# start_node NAME ADDR ADMIN_ADDR ARGS...: one kv-node (`--id NAME`, --worker-threads 1) with
# ARGS, logged in $OUT/commands.txt, its output in $TMP/NAME.out; waits until it is ready and
# checks it is this script's node (another process on the port would answer for it; a node
# that cannot listen exits within milliseconds). Its pid goes to PIDS and SERVERS.
start_node() {
  local name=$1 addr=$2 admin=$3; shift 3
  local cmd=("${WRAP[@]}" "$BIN/kv-node" --id "$name" --listen "$addr" --admin-listen "$admin" --worker-threads 1 "$@")
  echo "${cmd[*]}" >> "$OUT/commands.txt"
  "${cmd[@]}" > "$TMP/$name.out" 2>&1 &
  PIDS+=($!)
  SERVERS=$!
  for _ in $(seq 100); do curl -sf "$admin/readyz" >/dev/null && break; sleep 0.1; done
  sleep 0.3
  kill -0 "$SERVERS" 2>/dev/null || { echo "node $name did not start:" >&2; cat "$TMP/$name.out" >&2; return 1; }
}

# start_redis: Redis without persistence on 127.0.0.1:6399, logged in $OUT/commands.txt; waits
# until it answers. Its pid goes to PIDS and SERVERS.
start_redis() {
  local cmd=(redis-server --port 6399 --save "" --appendonly no)
  echo "${cmd[*]}" >> "$OUT/commands.txt"
  "${cmd[@]}" > "$TMP/redis.log" 2>&1 &
  PIDS+=($!)
  SERVERS=$!
  for _ in $(seq 50); do redis-cli -p 6399 ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "redis-server did not start:" >&2; cat "$TMP/redis.log" >&2; return 1
}
