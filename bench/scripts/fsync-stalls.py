#!/usr/bin/env python3
"""Whether slow fsyncs on this disk come to separate processes at the same moments.

    python3 bench/scripts/fsync-stalls.py [PROCESSES] [SECONDS] [DIR] [RATE]
    (defaults: 3 processes, 10 s, /tmp, as fast as they can)

Starts PROCESSES processes. Each appends 128 B records to its own file and calls fdatasync
after every record, as a replica log does (with RATE, at most that many a second each). The
file is zero-filled ahead of time, as quorumkv's logs are. It runs for SECONDS and notes every
fdatasync that takes more than 5 ms.
The script then prints, per process, the fdatasyncs, the slow ones, and how many slow ones
match a slow one in every other process (starting within 30 ms), with the median gap between
them. Nodes of a cluster on one machine share its disk: a stall that hits all their fsyncs at
once holds every write in flight, whatever W is.
"""
import multiprocessing
import os
import statistics
import sys
import tempfile
import time

SLOW = 0.005
NEAR = 0.030


def worker(path, seconds, rate, out):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, b"\0" * (64 << 20))
        os.fsync(fd)
        os.lseek(fd, 0, os.SEEK_SET)
        end = time.monotonic() + seconds
        n, slow = 0, []
        due = time.monotonic()
        while time.monotonic() < end:
            if rate:
                due += 1.0 / rate
                time.sleep(max(0.0, due - time.monotonic()))
            os.write(fd, b"x" * 128)
            t0 = time.monotonic()
            os.fdatasync(fd)
            took = time.monotonic() - t0
            n += 1
            if took > SLOW:
                slow.append((t0, took))
        out.put((path, n, slow))
    finally:
        os.close(fd)
        os.unlink(path)


def main():
    procs = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
    where = sys.argv[3] if len(sys.argv) > 3 else "/tmp"
    rate = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    d = tempfile.mkdtemp(dir=where, prefix="fsync-stalls-")
    out = multiprocessing.Queue()
    ps = [multiprocessing.Process(target=worker, args=(os.path.join(d, f"log{i}"), seconds, rate, out))
          for i in range(procs)]
    for p in ps:
        p.start()
    results = sorted(out.get() for _ in ps)
    for p in ps:
        p.join()
    os.rmdir(d)
    pace = f", at most {rate:.0f}/s each" if rate else ""
    print(f"{procs} processes, {seconds:.0f} s, fdatasync after every 128 B append{pace}, in {where}")
    for i, (_, n, slow) in enumerate(results):
        others = [r[2] for j, r in enumerate(results) if j != i]
        shared = sum(1 for t, _ in slow
                     if all(any(abs(t - u) < NEAR for u, _ in o) for o in others))
        gaps = [b[0] - a[0] for a, b in zip(slow, slow[1:])]
        line = f"process {i}: {n} fdatasyncs ({n / seconds:.0f}/s), {len(slow)} over 5 ms"
        if slow:
            ms = [took * 1000 for _, took in slow]
            line += f" (median {statistics.median(ms):.0f} ms, max {max(ms):.0f} ms)"
            if others:
                line += f", {shared} of them at the same moment as a slow one in every other process"
        if gaps:
            line += f", median gap {statistics.median(gaps) * 1000:.0f} ms"
        print(line)


if __name__ == "__main__":
    main()
