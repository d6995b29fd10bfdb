"""Soak: steady load through a gateway and `pipelines.stream` for minutes, with kill -9 of each in turn.

    python -m bench.soak [--minutes 10] [--rate 10000] [--kill_every 2] [--config templates/jobs/engine.als.yaml]

The traffic is `bench.steady`'s mix (1000-line requests stamped as they are sent), each line whose payload is
a JSON object tagged with a unique `"_soak": N`; eight clients send it at `--rate` with an `Idempotency-Key`
per request and retry until they get a 200 (a request counts as acknowledged then). The gateway runs apart
(`python -m pipelines.gateway`, on a fixed port) and the stream reads its spool (`--no_gateway`). Every
`--kill_every` minutes the stream's whole process tree (the stream and its Prism) is killed with SIGKILL and
restarted; half-way between, the gateway is. At the end the clients stop, the stream catches up and stops
cleanly, and the archive (`events/`) and the dead letters (last row per `_id`) are read whole.

Reported: lines acknowledged; lost (acknowledged tags in neither output: must be 0); duplicated (tags in the
archive more than once: must be 0); the memory (RSS) of the stream with Prism and of the gateway, early and
late in each life, and overall; the recovery after each kill (gateway: kill -> first 200; stream: kill -> the
archive and the dead letters hold as many tagged lines as were acknowledged at the kill, within the lines in
flight).

The default rate is half of the engine template's maximum sustainable rate measured by `bench.stream --steady
--search` (20,000 lines/s, README). Run it alone: `flock /tmp/dpipe-bench.lock python -m bench.soak`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench import steady
from connectors.files import latest_rows

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "templates" / "jobs" / "engine.als.yaml"
TAG = re.compile(rb'"_soak":(\d+)')


# -- processes -------------------------------------------------------------------------------------------------
def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (children in sessions of their own included), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def gone(pid: int) -> bool:
    """The process has exited (or is a zombie waiting for its parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the process and everything below it, then wait until all of them are gone."""
    victims = process_tree(proc.pid)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 60
    while not all(map(gone, victims)) and time.monotonic() < deadline:
        time.sleep(0.05)


def rss_mib(pid: int) -> float:
    """Resident memory of the process and everything below it."""
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the load ----------------------------------------------------------------------------------------------------
@dataclass
class Acks:
    """What the clients got acknowledged: the tags of each acknowledged request, and when the last 200 came."""

    tags: list[pa.Array] = field(default_factory=list)
    lines: int = 0
    tagged: int = 0
    last_ok: float = 0.0
    refused: int = 0  # answers other than 200 (429, 503, 507...) and connection failures: retried


def tags_of(body: bytes) -> pa.Array:
    return pa.array([int(m) for m in TAG.findall(body)], pa.int64())


async def clients(port: int, traffic: steady.Traffic, rate: int, stop: threading.Event, acks: Acks,
                  concurrency: int = 8) -> None:
    """Request i goes at start + i * 1000 / rate, is retried until a 200 (same body, same key)."""
    period = steady.PER_REQUEST / rate
    start = time.time()

    async def worker(w: int) -> None:
        i = w
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while not stop.is_set():
            delay = start + i * period - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            category, body = traffic.request(time.time(), first_id=i * steady.PER_REQUEST)
            head = b"POST /v1/logs/%s HTTP/1.1\r\nHost: x\r\nIdempotency-Key: soak-%d\r\nContent-Length: %d\r\n\r\n" % (
                category.encode(), i, len(body))
            while True:
                try:
                    if conn is None:
                        conn = await asyncio.open_connection("127.0.0.1", port)
                    conn[1].write(head + body)
                    status = await asyncio.wait_for(conn[0].readline(), 30)
                    length = 0
                    while (line := await asyncio.wait_for(conn[0].readline(), 30)) != b"\r\n":
                        if not line:
                            raise ConnectionError("closed")
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    await conn[0].readexactly(length)
                    if b" 200 " in status:
                        break
                except (OSError, asyncio.IncompleteReadError, TimeoutError):
                    if conn is not None:
                        conn[1].close()
                    conn = None
                acks.refused += 1
                await asyncio.sleep(0.2)
            tags = tags_of(body)
            acks.tags.append(tags)
            acks.lines += body.count(b"\n") + 1
            acks.tagged += len(tags)
            acks.last_ok = time.time()
            i += concurrency

    await asyncio.gather(*(worker(w) for w in range(concurrency)))


# -- the outputs -------------------------------------------------------------------------------------------------
class ArchiveRows:
    """Rows in `events/`, from Parquet footers, each file read once per version (stream files are replaced
    whole, under the same name, when a crash makes the stream write them again)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._seen: dict[Path, tuple[int, int]] = {}

    def count(self) -> int:
        total = 0
        for path in (self.out / "events").glob("*/*/*.parquet"):
            try:
                mtime = path.stat().st_mtime_ns
                cached = self._seen.get(path)
                if cached is None or cached[0] != mtime:
                    cached = self._seen[path] = (mtime, pq.read_metadata(path).num_rows)
            except OSError:  # replaced meanwhile: read it next time
                continue
            total += cached[1]
        return total


def landed(out: Path, rows: ArchiveRows) -> int:
    """Tagged lines in the outputs so far: archive rows (every archived line is tagged) and tagged dead
    letters (a tagged line a decoration refused)."""
    return rows.count() + len(dead_letter_tags(out))


def archived_tags(out: Path) -> pa.ChunkedArray:
    parts = []
    for path in sorted((out / "events").glob("*/*/*.parquet")):
        payload = pq.read_table(path, columns=["payload"]).column("payload")
        found = pc.struct_field(pc.extract_regex(payload, r'"_soak":(?P<n>\d+)'), "n")
        parts.append(pc.cast(pc.drop_null(found), pa.int64()))
    return pa.chunked_array(parts, pa.int64())


def dead_letter_tags(out: Path) -> pa.ChunkedArray:
    rows = latest_rows(str(out / "deadletter")) if (out / "deadletter").exists() else {}
    return pa.chunked_array([pa.array([int(m) for r in rows.values() for m in TAG.findall(r["raw"].encode())],
                                      pa.int64())])


# -- the run -----------------------------------------------------------------------------------------------------
@dataclass
class Life:
    """One life of a process between two kills: RSS samples (seconds since its start, MiB)."""

    name: str
    started: float
    rss: list[tuple[float, float]] = field(default_factory=list)


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.spool, self.out = work / "spool", work / "out"
        self.port = free_port()
        self.lives: list[Life] = []
        self.recoveries: list[tuple[str, float, float | None]] = []  # (what, minute of the kill, seconds)
        self._n = 0

    def start_gateway(self) -> subprocess.Popen[bytes]:
        return self._start("gateway", ["pipelines.gateway", "--spool", str(self.spool), "--port", str(self.port),
                                       "--config", str(self.args.config)])

    def start_stream(self) -> subprocess.Popen[bytes]:
        return self._start("stream", ["pipelines.stream", "--output", str(self.out), "--spool", str(self.spool),
                                      "--no_gateway", "--config", str(self.args.config),
                                      "--replay_bytes", str(self.args.replay_bytes)])

    def _start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        self._n += 1
        log = self.work / f"{name}{self._n}.log"
        proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=log.open("wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.lives.append(Life(name, time.monotonic()))
        return proc


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="dpipe-bench-soak-") as tmp:
        work = Path(tmp)
        soak = Soak(args, work)
        procs = {"gateway": soak.start_gateway(), "stream": soak.start_stream()}
        try:
            return soak_run(args, soak, procs)
        finally:
            for proc in procs.values():  # a failed or interrupted run leaves nothing running
                if proc.poll() is None:
                    kill_tree(proc)


def soak_run(args: argparse.Namespace, soak: Soak, procs: dict[str, subprocess.Popen[bytes]]) -> int:
    """Load, kills and restarts (`procs` holds the live processes), then the accounting."""
    traffic = steady.Traffic(steady.pool_archive(soak.work, 200_000))
    acks, stop = Acks(), threading.Event()
    load = threading.Thread(target=lambda: asyncio.run(clients(soak.port, traffic, args.rate, stop, acks)),
                            daemon=True, name="clients")
    rows = ArchiveRows(soak.out)
    began = time.monotonic()
    load.start()
    seconds, every = args.minutes * 60, args.kill_every * 60
    kills = [(every * (k + 1), "stream") for k in range(int(seconds // every)) if every * (k + 1) < seconds]
    kills += [(every * (k + 0.5), "gateway") for k in range(int(seconds // every) + 1) if every * (k + 0.5) < seconds]
    pending: list[tuple[str, float, int, float]] = []  # (what, minute of the kill, acked at the kill, since)
    for at, what in [*sorted(kills), (seconds, "end")]:
        while time.monotonic() - began < at:
            sample(soak, procs, rows, pending)
            time.sleep(1.0)
        if what == "gateway":
            kill_tree(procs["gateway"])
            killed = time.time()
            procs["gateway"] = soak.start_gateway()
            while acks.last_ok < killed and time.monotonic() - began < at + 120:
                time.sleep(0.05)
            soak.recoveries.append(("gateway", at / 60, acks.last_ok - killed if acks.last_ok >= killed else None))
        elif what == "stream":
            kill_tree(procs["stream"])
            pending.append(("stream", at / 60, acks.tagged, time.monotonic()))
            procs["stream"] = soak.start_stream()
    stop.set()
    load.join(60)
    deadline = time.monotonic() + 600
    while landed(soak.out, rows) < acks.tagged and time.monotonic() < deadline:
        sample(soak, procs, rows, pending)
        time.sleep(1.0)
    caught_up = time.monotonic() - began - seconds
    soak.recoveries += [(what, minute, None) for what, minute, _, _ in pending]
    procs["stream"].send_signal(signal.SIGTERM)
    clean = procs["stream"].wait(120) == 0
    procs["gateway"].send_signal(signal.SIGTERM)
    procs["gateway"].wait(60)
    report(args, soak, acks, caught_up, clean)
    archived, dead = archived_tags(soak.out), dead_letter_tags(soak.out)
    want = pa.chunked_array(acks.tags, pa.int64())
    found = pa.chunked_array([*archived.chunks, *dead.chunks], pa.int64())
    lost = len(want) - pc.sum(pc.is_in(want, value_set=pc.unique(found))).as_py() if len(want) else 0
    duplicated = len(archived) - len(pc.unique(archived))
    print(f"\nlines acknowledged {acks.lines:,} ({acks.tagged:,} tagged); lost {lost:,}; duplicated in the "
          f"archive {duplicated:,}; archive rows {len(archived):,}, tagged dead letters {len(dead):,}; "
          f"{acks.refused:,} attempts refused or cut off and retried")
    print(f"BENCH soak lost={lost} duplicated={duplicated} acknowledged={acks.lines} clean_stop={clean}")
    return 0 if lost == 0 and duplicated == 0 and clean else 1


def sample(soak: Soak, procs: dict[str, subprocess.Popen[bytes]], rows: ArchiveRows,
           pending: list[tuple[str, float, int, float]]) -> None:
    """RSS of the live processes; a stream's recovery once the outputs hold what was acknowledged at its kill."""
    now = time.monotonic()
    for name, proc in procs.items():
        life = next(life for life in reversed(soak.lives) if life.name == name)
        life.rss.append((now - life.started, rss_mib(proc.pid)))
    if pending:
        archived = landed(soak.out, rows)
        for entry in list(pending):
            what, minute, acked, since = entry
            if archived >= acked:
                soak.recoveries.append((what, minute, now - since))
                pending.remove(entry)


def report(args: argparse.Namespace, soak: Soak, acks: Acks, caught_up: float, clean: bool) -> None:
    print(f"\nsoak: {args.minutes:g} min at {args.rate:,} lines/s asked ({acks.lines / (args.minutes * 60):,.0f} "
          f"acknowledged/s), {args.config.name}, kill -9 of the stream every {args.kill_every:g} min and of the "
          f"gateway half-way between; replay_bytes {args.replay_bytes:,}; 2 cores shared with other work\n")
    print("| kill -9 | at minute | recovery s |\n|---|---:|---:|")
    for what, minute, secs in sorted(soak.recoveries, key=lambda r: r[1]):
        print(f"| {what} | {minute:.1f} | {'not within the run' if secs is None else f'{secs:.1f}'} |")
    print(f"\nafter the load: the archive caught up in {caught_up:.0f} s; clean stop: {clean}")
    print("\n| process life | RSS MiB 30 s in | RSS MiB at the end | peak |\n|---|---:|---:|---:|")
    for life in soak.lives:
        if not life.rss:
            continue
        early = next((r for t, r in life.rss if t >= 30), life.rss[0][1])
        print(f"| {life.name} from {life.started - soak.lives[0].started:.0f} s | {early:.0f} | "
              f"{life.rss[-1][1]:.0f} | {max(r for _, r in life.rss):.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=10_000, help="lines/s (default: half of the engine "
                                                                  "template's measured maximum, 20,000)")
    parser.add_argument("--kill_every", type=float, default=2.0, metavar="MIN",
                        help="minutes between two kills of the stream (and of the gateway)")
    parser.add_argument("--config", type=Path, default=TEMPLATE)
    parser.add_argument("--replay_bytes", type=int, default=64 << 20,
                        help="the stream's --replay_bytes (spool kept to recompute open windows after a crash)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
