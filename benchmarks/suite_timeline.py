"""When each test file ran on which pytest-xdist worker: is the suite short of CPU, or of work
to hand out?

    BAL_JAX_TIMELINE=/tmp/timeline.jsonl python -m pytest -p benchmarks.suite_timeline
    python -m benchmarks.suite_timeline /tmp/timeline.jsonl

As a pytest plugin (`-p benchmarks.suite_timeline`) it appends a line per test start and end
to $BAL_JAX_TIMELINE: the worker, the test and the time. As a command it prints, per worker,
when it finished and how long it was busy, and each test file's start, end and seconds.
Workers that finish far apart mean the files were handed out unevenly; workers that finish
together, busy to the end, mean only less work per test makes the suite faster.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time

_ENV = "BAL_JAX_TIMELINE"


_worker: str | None = None  # "gw0", ...; "main" without xdist; None: an xdist controller,
# which sees every worker's reports but runs no test.


def _log(nodeid: str, event: str) -> None:
    path = os.environ.get(_ENV)
    if not path or _worker is None:
        return
    line = {"worker": _worker, "test": nodeid, "event": event, "t": time.time()}
    with open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def pytest_configure(config) -> None:
    # From the config, not PYTEST_XDIST_WORKER: a pytest started by a test inherits that.
    global _worker
    if hasattr(config, "workerinput"):
        _worker = config.workerinput["workerid"]
    elif not getattr(config.option, "numprocesses", None):
        _worker = "main"


def pytest_runtest_logstart(nodeid, location) -> None:
    _log(nodeid, "start")


def pytest_runtest_logfinish(nodeid, location) -> None:
    _log(nodeid, "end")


def summary(lines: list[str]) -> str:
    """Per worker: its end and busy seconds, then its test files in the order they ran."""
    events = [json.loads(line) for line in lines if line.strip()]
    if not events:
        raise ValueError("The timeline is empty: was pytest run with -p benchmarks.suite_timeline?")
    t0 = min(e["t"] for e in events)
    spans: dict[tuple[str, str], list[float]] = {}
    for e in events:
        key = (e["worker"], e["test"].split("::")[0])
        span = spans.setdefault(key, [float("inf"), 0.0])
        span[0], span[1] = min(span[0], e["t"] - t0), max(span[1], e["t"] - t0)
    by_worker = collections.defaultdict(list)
    for (worker, path), (start, end) in spans.items():
        by_worker[worker].append((start, end, path))
    out = []
    for worker, files in sorted(by_worker.items()):
        files.sort()
        busy = sum(end - start for start, end, _ in files)
        out.append(f"{worker}: ends at {max(e for _, e, _ in files):.0f} s, busy {busy:.0f} s")
        out += [f"  {s:7.1f} {e:7.1f} {e - s:6.1f}  {p}" for s, e, p in files]
    return "\n".join(out)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(summary(f.readlines()))
