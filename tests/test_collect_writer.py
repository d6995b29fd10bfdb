"""The writer process of the collector tests: `python -m tests.test_collect_writer PLAN.json`.

It plays the application (and logrotate) on the servers the collector runs on: appends ALS lines with unique
ids to log files through an open descriptor, as a logging library does, and rotates them. The plan is a JSON
list of steps:

    {"op": "write", "path": P, "tag": T, "lines": N}      append lines T-0 .. T-(N-1) (ids continue per tag),
                                                          at most "rate" lines per second, "area" (us)
    {"op": "rotate", "path": P, "to": Q, "late": K}       rename P to Q, K more lines to the old descriptor (an
                                                          application that has not reopened yet), then reopen P
    {"op": "copytruncate", "path": P, "to": Q}            copy P to Q, truncate P to 0 (logrotate copytruncate)
    {"op": "truncate", "path": P}
    {"op": "delete", "path": P}
    {"op": "wait_acked", "lines": N}                      until the collector's lines_acked_total >= N
    {"op": "wait_watched", "path": P}                     until the collector's bytes_behind has a row for P
    {"op": "signal", "signal": "SIGSTOP"}                 to the collector (its pid in the plan's header)

The header (first element) is {"metrics": URL, "pid": PID, "deadline": S}. Waits poll with a deadline and
exit 3 when it passes. Collected by pytest like the other test modules; it has no tests of its own.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

PAD = "x" * 150


def line(tag: str, n: int, area: str = "us") -> bytes:
    """About 200 bytes: `us,<ms now>,{"id":"tag-n","pad":...}`."""
    return b'%s,%d,{"id":"%s-%d","pad":"%s"}\n' % (area.encode(), int(time.time() * 1000), tag.encode(), n,
                                                     PAD.encode())


def metrics(url: str) -> dict[str, float]:
    """name{labels} -> value, from Prometheus text."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r"^(\S+?(?:\{.*\})?) (\S+)$", text, re.MULTILINE)}


def total(values: dict[str, float], name: str) -> float:
    return sum(v for k, v in values.items() if k == name or k.startswith(name + "{"))


def poll(what: str, check: Any, deadline: float) -> None:
    while not check():
        if time.monotonic() > deadline:
            print(f"writer: timed out waiting for {what}", file=sys.stderr)
            sys.exit(3)
        time.sleep(0.05)


def run(plan: list[dict[str, Any]]) -> None:
    header, steps = plan[0], plan[1:]
    deadline = time.monotonic() + header.get("deadline", 60)
    fds: dict[str, int] = {}
    counts: Counter[str] = Counter()

    def fd_of(path: str) -> int:
        if path not in fds:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fds[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return fds[path]

    def write(fd: int, tag: str, n: int, rate: float | None = None, area: str = "us") -> None:
        started = time.monotonic()
        for start in range(0, n, 100):  # like an application: many small appends
            os.write(fd, b"".join(line(tag, counts[tag] + i, area) for i in range(min(100, n - start))))
            counts[tag] += min(100, n - start)
            if rate:
                time.sleep(max(0.0, started + (start + 100) / rate - time.monotonic()))  # pacing the load

    for step in steps:
        op = step["op"]
        if op == "write":
            write(fd_of(step["path"]), step["tag"], step["lines"], step.get("rate"), step.get("area", "us"))
        elif op == "rotate":
            old = fd_of(step["path"])
            os.rename(step["path"], step["to"])
            write(old, step.get("late_tag", step.get("tag", "late")), step.get("late", 0))
            os.close(fds.pop(step["path"]))
        elif op == "copytruncate":
            Path(step["to"]).write_bytes(Path(step["path"]).read_bytes())
            os.truncate(step["path"], 0)
        elif op == "truncate":
            os.truncate(step["path"], 0)
        elif op == "delete":
            os.unlink(step["path"])
            if step["path"] in fds:
                os.close(fds.pop(step["path"]))
        elif op == "wait_acked":
            poll(f"{step['lines']} acknowledged lines",
                 lambda s=step: total(metrics(header["metrics"]), "dpipe_collector_lines_acked_total") >= s["lines"],
                 deadline)
        elif op == "wait_watched":
            poll(f"the collector to follow {step['path']}",
                 lambda s=step: any(f'file="{s["path"]}"' in k for k in metrics(header["metrics"])), deadline)
        elif op == "signal":
            os.kill(header["pid"], getattr(signal, step["signal"]))
        else:
            raise SystemExit(f"writer: unknown op {op!r}")
    print(orjson.dumps(counts).decode(), flush=True)


if __name__ == "__main__":
    run(orjson.loads(Path(sys.argv[1]).read_bytes()))
