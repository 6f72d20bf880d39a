#!/usr/bin/env bash
# etcd and quorumkv on a disk limited to WIOPS write operations a second (default 750, at
# which one `dd oflag=dsync` write of 128 B takes about 4 ms: the disk the issues assume),
# shared by every server process, as one slow disk under one machine's nodes would be.
# The limit is the kernel's block throttle (cgroup v1 `blkio.throttle.write_iops_device`) on
# the disk that holds the data directories; the load generator is not limited (it writes
# nothing until a run ends).
#   - etcd 3.4, three members (leader endpoint)
#   - quorumkv leader-follower, 3 nodes, W=2, leader reads, fsync batch
#   - quorumkv leaderless, 5 nodes, N=3 R=2 W=2, fsync batch
# 50/50 zipfian, 10k keys, 100 B values, 16 and 256 closed-loop clients, DUR (20 s) after 2 s.
#
#   bench/scripts/slow-disk.sh [OUT_DIR]      (default: bench/results/slow-disk)
#
# Needs root, cgroup v1 blkio (mounted at /sys/fs/cgroup/blkio), etcd-server, etcd-client,
# python3. Note that the throttle lets each 100 ms slice's budget through at once and holds
# what exceeds it for the next slice: latency percentiles show 100 ms steps, which a disk
# with a steady 4 ms fsync would not.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-bench/results/slow-disk}
DUR=${DUR:-20s}
WARM=${WARM:-2s}
WIOPS=${WIOPS:-750}
CG=/sys/fs/cgroup/blkio/quorumkv-slow-disk
[ -d /sys/fs/cgroup/blkio ] || { echo "needs cgroup v1 blkio at /sys/fs/cgroup/blkio (this machine: $(stat -fc %T /sys/fs/cgroup))" >&2; exit 1; }
source bench/scripts/common.sh
prepare_run etcd etcdctl python3 findmnt lsblk
cleanup() {
  stop_servers; rm -rf "$TMP"
  echo $$ > /sys/fs/cgroup/blkio/cgroup.procs 2>/dev/null || true
  rmdir "$CG" 2>/dev/null || true
}
trap cleanup EXIT

# The whole disk under $TMP (the throttle applies to disks, not partitions).
SRC=$(findmnt -no SOURCE -T "$TMP")
DISK=$(lsblk -no PKNAME "$SRC" 2>/dev/null | head -1)
[ -n "$DISK" ] || DISK=$(basename "$SRC")
DEV=$(cat "/sys/block/$DISK/dev")
mkdir -p "$CG"
echo "$DEV $WIOPS" > "$CG/blkio.throttle.write_iops_device"
echo "echo '$DEV $WIOPS' > $CG/blkio.throttle.write_iops_device   # $DISK; every server below runs in $CG" >> "$OUT/commands.txt"
# Servers start from this shell; it joins the cgroup, and kv-bench leaves it.
echo $$ > "$CG/cgroup.procs"
dd if=/dev/zero of="$TMP/dd" bs=128 count=200 oflag=dsync 2> "$OUT/dd-dsync.txt"
rm -f "$TMP/dd"
echo "dd if=/dev/zero of=\$TMP/dd bs=128 count=200 oflag=dsync   # inside the cgroup" >> "$OUT/commands.txt"

# kv-bench out of the cgroup: the throttle is for the servers' disk.
eval "$(declare -f bench | sed '1s/bench/bench_in_cgroup/')"
bench() { ( echo $BASHPID > /sys/fs/cgroup/blkio/cgroup.procs; bench_in_cgroup "$@" ); }

flush_stats() { # flush_stats FILE ADMIN_PORTS...: the nodes' flush counters so far
  local file=$1; shift
  for p in "$@"; do curl -s "127.0.0.1:$p/metrics" | grep -E '^kv_fsync_(duration_seconds|batch_records)_(sum|count) ' | sed "s/^/$p /"; done > "$file" || true
}

start_etcd
bench etcd-16 --driver etcd --endpoints "$ETCD_LEADER" --clients 16
bench etcd-256 --driver etcd --endpoints "$ETCD_LEADER" --clients 256
stop_servers

cluster_up lf --nodes 3 --w 2 --r 2 --base-port 7401 --admin-base-port 9401 -- --worker-threads 1
LEADER=$(kv_leader 127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403)
for c in 16 256; do
  flush_stats "$TMP/before" 9401 9402 9403
  bench kv-lf-$c --driver kv --endpoints "$LEADER" --clients $c --w 2 --read-from leader
  flush_stats "$OUT/kv-lf-$c/fsync.txt" 9401 9402 9403
  mv "$TMP/before" "$OUT/kv-lf-$c/fsync-before.txt"
done
stop_servers

cluster_up ll --nodes 5 --mode leaderless --n 3 --r 2 --w 2 --base-port 7501 --admin-base-port 9501 -- --worker-threads 1
for c in 16 256; do
  flush_stats "$TMP/before" 9501 9502 9503 9504 9505
  bench kv-ll-$c --driver kv --endpoints 127.0.0.1:7501,127.0.0.1:7502,127.0.0.1:7503,127.0.0.1:7504,127.0.0.1:7505 --clients $c
  flush_stats "$OUT/kv-ll-$c/fsync.txt" 9501 9502 9503 9504 9505
  mv "$TMP/before" "$OUT/kv-ll-$c/fsync-before.txt"
done
stop_servers

python3 - "$OUT" "$WIOPS" <<'PY'
import json, os, re, sys
sys.path.insert(0, "bench/scripts")
import cpu
out, wiops = sys.argv[1], int(sys.argv[2])
names = ["etcd-16", "kv-lf-16", "kv-ll-16", "etcd-256", "kv-lf-256", "kv-ll-256"]
d = {}
for name in names:
    p = os.path.join(out, name, "summary.json")
    if not os.path.exists(p):
        continue
    s = json.load(open(p)); l = s["latency_us"]
    flushes = ""
    f = os.path.join(out, name, "fsync.txt")
    if os.path.exists(f):
        # Counters after the run minus before it (warm-up included), summed over the nodes.
        m = {}
        for fname, sign in (("fsync.txt", 1), ("fsync-before.txt", -1)):
            for line in open(os.path.join(out, name, fname)):
                _, k, v = line.split()
                m[k] = m.get(k, 0.0) + sign * float(v)
        n = m.get("kv_fsync_batch_records_count", 0)
        if n:
            flushes = "%.1f records each, %.2f ms each" % (
                m["kv_fsync_batch_records_sum"] / n, 1000 * m["kv_fsync_duration_seconds_sum"] / n)
    d[name] = (name, s["ops_per_sec"], l["p50"], l["p90"], l["p99"], sum(s["errors"].values()), flushes, cpu.cells(s))
dd = open(os.path.join(out, "dd-dsync.txt")).read().strip().splitlines()[-1]
secs = float(re.search(r"copied, ([0-9.]+) s", dd).group(1))
with open(os.path.join(out, "RESULTS.md"), "w") as f:
    f.write("Every server on a disk limited to %d write operations a second (one 128 B `dd oflag=dsync` write: %.2f ms).\n\n" % (wiops, secs / 200 * 1000))
    f.write("| run | ops/s | p50 us | p90 us | p99 us | errors | nodes' flushes during the run |" + cpu.HEADER + "\n|---|---:|---:|---:|---:|---:|---|" + cpu.RULE + "\n")
    for n in names:
        if n in d:
            f.write("| %s | %.0f | %d | %d | %d | %d | %s |%s\n" % d[n])
    def ratio(a, b, label):
        cpu.ratio(f, d, a, b, label, 4)
    ratio("kv-lf-16", "etcd-16", "16 clients, quorumkv leader-follower / etcd")
    ratio("kv-lf-256", "etcd-256", "256 clients, quorumkv leader-follower / etcd")
    ratio("kv-ll-16", "etcd-16", "16 clients, quorumkv leaderless / etcd")
    ratio("kv-ll-256", "etcd-256", "256 clients, quorumkv leaderless / etcd")
    f.write("\n\nmachine: %d CPUs; commands in commands.txt\n" % os.cpu_count())
print(open(os.path.join(out, "RESULTS.md")).read())
PY
