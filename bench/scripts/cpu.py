"""CPU per operation of a kv-bench run, for the benchmark scripts' RESULTS.md tables."""

HEADER = " gen us/op | servers us/op |"
RULE = "---:|---:|"


def cells(summary):
    """The generator's and the servers' CPU microseconds per operation, as table cells."""
    def us(c):
        return "%.1f" % c["per_op_us"] if c and c.get("per_op_us") is not None else "-"
    return " %s | %s |" % (us(summary.get("client_cpu")), us(summary.get("server_cpu")))
