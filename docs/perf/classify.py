#!/usr/bin/env python3
"""Groups the samples of a `perf record --call-graph dwarf` profile of the worker by what the
stack shows they were doing (first matching rule wins): `perf script -i FILE | classify.py`."""
import sys
from collections import Counter

RULES = [
    ("lapin I/O thread", lambda comm, st: comm.startswith("lapin-io")),
    ("tokio idle/park (epoll, futex)", lambda c, st: "park_internal" in st or "Context::park" in st),
    ("tracing (log lines)", lambda c, st: "tracing_subscriber" in st),
    ("AWS SDK call (orchestrator, hyper, TCP connect, SigV4)",
     lambda c, st: any(k in st for k in ("aws_smithy", "hyper", "aws_sigv4", "aws_runtime", "rustls"))),
    ("lapin on the runtime (channels, promises, consumer)", lambda c, st: "lapin::" in st or "flume::" in st),
    ("order parse / JSON", lambda c, st: "serde_json" in st or "domain::order::parse" in st),
    ("our code (pipeline, settle, slots, locks)", lambda c, st: "aws_account_worker::" in st),
    ("malloc/free elsewhere", lambda c, st: "malloc" in st or "free" in st),
    ("other", lambda c, st: True),
]

samples = Counter()
total = 0
comm, stack = None, []


def flush():
    global total
    if comm is None:
        return
    text = "\n".join(stack)
    for name, rule in RULES:
        if rule(comm, text):
            samples[name] += 1
            break
    total += 1


for line in sys.stdin:
    if not line.strip():
        flush()
        comm, stack = None, []
    elif not line.startswith((" ", "\t")):
        comm = line.split()[0]
    else:
        stack.append(line.strip())
flush()
print(f"{total} samples")
for name, n in samples.most_common():
    print(f"{100 * n / total:5.1f}%  {name}")
