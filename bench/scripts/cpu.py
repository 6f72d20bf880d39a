"""CPU per operation of a kv-bench run, for the benchmark scripts' RESULTS.md tables."""

HEADER = " gen us/op | servers us/op |"
RULE = "---:|---:|"


def cells(summary):
    """The generator's and the servers' CPU microseconds per operation, as table cells."""
    def us(c):
        return "%.1f" % c["per_op_us"] if c and c.get("per_op_us") is not None else "-"
    return " %s | %s |" % (us(summary.get("client_cpu")), us(summary.get("server_cpu")))


def ratio(f, rows, a, b, label, p99_col):
    """Writes `label: N.NNx throughput, p99 A vs B us` comparing runs `a` and `b` of `rows`
    (name -> table row: ops/s second, p99 at `p99_col`), when both ran."""
    if a in rows and b in rows:
        f.write("\n%s: %.2fx throughput, p99 %d vs %d us" % (
            label, rows[a][1] / rows[b][1], rows[a][p99_col], rows[b][p99_col]))
