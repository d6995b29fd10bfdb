"""Steady load for `bench.stream --steady`: live traffic at a fixed rate, and what comes out how soon.

The traffic is the generator's category mix (`pipelines.generate`), re-stamped with the wall clock as each
1000-line request is sent, so the stream sees live lines. Error spikes (one new message shape in one area,
`SPIKE_LINES` lines in one POST) cross the engine template's `error_spike` rule; the bench serves the
alarms' webhook on loopback and times POST acknowledged -> notification received. A sampler thread reads
the spool's size and the result folders every second.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

from connectors.gateway.spool import spool_bytes
from connectors.spool_source import unread_bytes
from pipelines.generate import SECOND_TS_CATEGORIES, Spec, generate
from transforms.category import category_from_path

ROOT = Path(__file__).resolve().parent.parent
PER_REQUEST = 1000
SPIKE_LINES = 150  # > error_spike's 100 in one POST: that POST is the one that crosses the threshold
SPIKE_AREA = "fr"
RESULT_KINDS = ("counters", "stats", "cardinality")
MIN_TS = 1262275200  # below this the parser calls a timestamp invalid: such lines stay as generated


# -- traffic -------------------------------------------------------------------------------------------------
class Traffic:
    """The generator's lines, split around their timestamp so each request can be stamped when it is sent."""

    def __init__(self, logs: Path, seed: int = 11) -> None:
        self.pools: dict[str, list[tuple[bytes, bytes | None, bool]]] = {}
        for path in sorted(logs.iterdir()):
            category = category_from_path(str(path))
            seconds = any(path.name.startswith(c) for c in SECOND_TS_CATEGORIES)
            pool = self.pools.setdefault(category, [])
            for line in path.read_bytes().split(b"\n"):
                if not line:
                    continue  # the gateway skips empty lines anyway
                parts = line.split(b",", 2)
                if len(parts) == 3 and parts[1].isdigit() and int(parts[1]) >= MIN_TS:
                    pool.append((parts[0] + b",", b"," + parts[2], seconds))
                else:
                    pool.append((line, None, seconds))  # malformed on purpose: sent as generated
        self.categories = sorted(self.pools)
        self.weights = [len(self.pools[c]) for c in self.categories]
        self.next = dict.fromkeys(self.categories, 0)
        self.rng = random.Random(seed)
        self.bytes_per_line = sum(len(h) + len(t or b"") + 14 for p in self.pools.values() for h, t, _ in p) / \
            max(1, sum(self.weights))

    def request(self, now: float, first_id: int | None = None) -> tuple[str, bytes]:
        """A 1000-line body of one category (chosen in proportion to the mix), stamped `now`. With `first_id`,
        line k whose payload is a JSON object gets `"_soak": first_id + k` in it (bench/soak.py: which
        acknowledged line is where)."""
        category = self.rng.choices(self.categories, self.weights)[0]
        pool, i = self.pools[category], self.next[category]
        ms, s = b"%d" % int(now * 1000), b"%d" % int(now)
        out = []
        for k in range(PER_REQUEST):
            head, tail, seconds = pool[(i + k) % len(pool)]
            if tail is not None and first_id is not None and tail.startswith(b",{"):
                tail = b',{"_soak":%d%s%s' % (first_id + k, b"" if tail.startswith(b",{}") else b",", tail[2:])
            out.append(head if tail is None else head + (s if seconds else ms) + tail)
        self.next[category] = (i + PER_REQUEST) % len(pool)
        return category, b"\n".join(out)


def spike_word(n: int) -> str:
    """Letters only (g..z): the normalizer turns digits and hex into `?`, and each spike needs its own shape,
    since a key's cooldown (30 min) would silence a repeated one."""
    letters = "ghijklmnopqrstuvwxyz"
    word = ""
    n += 20 * 20  # at least three letters
    while n:
        n, r = divmod(n, 20)
        word = letters[r] + word
    return word


def spike_body(n: int, now: float) -> bytes:
    message = f"bench spike {spike_word(n)} failed"
    payload = orjson.dumps({"class": "BenchService", "message": message, "uid": 1})
    return b"\n".join(b"%s,%d,%s" % (SPIKE_AREA.encode(), int(now * 1000), payload) for _ in range(SPIKE_LINES))


# -- the webhook ------------------------------------------------------------------------------------------------
class Webhook:
    """A loopback HTTP server that records (arrival time, alarm) for every POST."""

    def __init__(self) -> None:
        self.alarms: list[tuple[float, dict[str, Any]]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.alarms.append((time.time(), json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alarm"
        threading.Thread(target=self.server.serve_forever, daemon=True, name="webhook").start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def bench_config(template: str, work: Path, webhook: str | None, interval: int | None) -> Path:
    """The template with `alarms.webhook` pointed at the bench and, with `interval`, counters and statistics
    windows of that many seconds (a 60 s run sees no 10 min or 1 h interval end otherwise)."""
    job = yaml.safe_load(Path(template).read_text())
    if webhook and job.get("alarms"):
        job["alarms"]["webhook"] = {"url": webhook, "max_retries": 0, "timeout": "5s"}
        job["alarms"]["console"] = None
    if interval:
        for counter in job.get("counters") or []:
            counter["interval"] = f"{interval}s"
        for stat in job.get("statistics") or []:
            stat["window"] = f"{interval}s"
    path = work / "bench-job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


# -- sampling ----------------------------------------------------------------------------------------------------
@dataclass
class Samples:
    backlog: list[tuple[float, int]] = field(default_factory=list)  # (wall time, bytes no reader has cut yet)
    spool: list[tuple[float, int]] = field(default_factory=list)  # (wall time, bytes in the spool's segments)
    # (kind, name, end ms, _id) -> (when seen, the row's bytes), in the order the rows were written
    first_seen: dict[tuple[str, str, int, str], list[tuple[float, bytes]]] = field(default_factory=dict)
    first_card: float | None = None


def sample(out: Path, spool: Path, stop: threading.Event, samples: Samples) -> None:
    """Every second: the spool's bytes, and the result rows of files not read before (files are published
    whole, by rename, so a file seen once is complete; names sort in emission order, as `latest_rows` reads
    them)."""
    seen: set[Path] = set()
    while not stop.wait(1.0):
        now = time.time()
        samples.backlog.append((now, unread_bytes(spool)))
        samples.spool.append((now, spool_bytes(spool)))  # read segments kept for a replay after a crash too
        for kind in RESULT_KINDS:
            folder = out / kind
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("part-*.jsonl")):
                if path in seen:
                    continue
                seen.add(path)
                for line in path.read_bytes().splitlines():
                    row = orjson.loads(line)
                    if kind == "cardinality":
                        samples.first_card = samples.first_card or now
                        continue
                    width = row.get("interval_s") or row.get("window_s") or 0
                    name = str(row.get("counter") or row.get("stat") or "")
                    key = (kind, name, row["_t"] + width * 1000, row["_id"])
                    samples.first_seen.setdefault(key, []).append((now, line))


# -- one run -------------------------------------------------------------------------------------------------------
@dataclass
class Trial:
    rate: int
    seconds: float
    sent: int = 0
    refused: int = 0
    spikes: list[tuple[str, float]] = field(default_factory=list)  # (word, ack time)
    samples: Samples = field(default_factory=Samples)
    alarms: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    bytes_per_line: float = 200.0
    failed: str | None = None  # the stream's last words when it died during the trial

    @property
    def achieved(self) -> float:
        return self.sent / max(1e-9, self.ended - self.started)

    def alarm_latencies(self) -> list[float]:
        out = []
        for word, acked in self.spikes:
            times = [t for t, a in self.alarms if a.get("rule") == "error_spike" and word in json.dumps(a)]
            if times:
                out.append(min(times) - acked)
        return out

    def result_delays(self, kind: str, out_of_order: float) -> list[float]:
        """Per interval of every key that ended (plus the out-of-order allowance) inside the run: how long after
        the watermark's approximate passing its final row (the last one written for it) first came out; 0
        when a running pane already had the final value (a discarding pane then has nothing to add)."""
        delays = []
        for (k, _, end_ms, _), seen in self.samples.first_seen.items():
            due = end_ms / 1000 + out_of_order
            if k != kind or not (self.started <= due <= self.ended):
                continue
            first = min(t for t, line in seen if line == seen[-1][1])
            delays.append(max(0.0, first - due))
        return delays

    def bounded(self) -> bool:
        """The backlog does not grow over the trial's second half (least-squares slope x half < the larger of
        2 s of input and 16 MiB: sealed segments are deleted whole, so the size saws), nothing refused, and
        the client kept the rate."""
        half = [(t, b) for t, b in self.samples.backlog if t >= (self.started + self.ended) / 2 and t <= self.ended]
        if len(half) < 3 or self.failed or self.refused or self.achieved < 0.95 * self.rate:
            return False
        n = len(half)
        mt, mb = sum(t for t, _ in half) / n, sum(b for _, b in half) / n
        slope = sum((t - mt) * (b - mb) for t, b in half) / max(1e-9, sum((t - mt) ** 2 for t, _ in half))
        growth = slope * (half[-1][0] - half[0][0])
        return growth < max(2 * self.rate * self.bytes_per_line, 16 << 20)


async def _post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, category: str, body: bytes) -> bool:
    writer.write(b"POST /v1/logs/%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                 % (category.encode(), len(body), body))
    status = await asyncio.wait_for(reader.readline(), 60)
    length = 0
    while (line := await reader.readline()) != b"\r\n":
        if not line:
            raise ConnectionError("the gateway closed the connection")  # the stream died: the trial fails
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return b" 200 " in status


async def load(port: int, traffic: Traffic, trial: Trial, spike_every: float | None, concurrency: int) -> None:
    """Request i goes at start + i * 1000 / rate (a late client sends at once, and the achieved rate shows it)."""
    period = PER_REQUEST / trial.rate
    total = int(trial.seconds / period)
    trial.started = start = time.time()

    async def worker(w: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for i in range(w, total, concurrency):
            delay = start + i * period - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            category, body = traffic.request(time.time())
            if await _post(reader, writer, category, body):
                trial.sent += PER_REQUEST
            else:
                trial.refused += 1
        writer.close()

    async def spiker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = 0
        while True:
            await asyncio.sleep(spike_every - (time.time() - start) % spike_every)
            if time.time() - start > trial.seconds - 2:
                break
            if await _post(reader, writer, "error", spike_body(n, time.time())):
                trial.spikes.append((spike_word(n), time.time()))
                trial.sent += SPIKE_LINES
            n += 1
        writer.close()

    jobs = [worker(w) for w in range(concurrency)] + ([spiker()] if spike_every else [])
    await asyncio.gather(*jobs)
    trial.ended = time.time()


def run_trial(traffic: Traffic, rate: int, seconds: float, config: Path | None, spike_every: float | None,
              webhook: Webhook | None, concurrency: int = 8, settle: float = 0.0) -> Trial:
    """Start `pipelines.stream` (Prism, --port 0, output and spool in a temp dir), load it, sample it."""
    trial = Trial(rate, seconds, bytes_per_line=traffic.bytes_per_line)
    with tempfile.TemporaryDirectory(prefix="dpipe-bench-steady-") as tmp:
        work = Path(tmp)
        out, spool, log = work / "out", work / "spool", work / "stream.log"
        cmd = [sys.executable, "-m", "pipelines.stream", "--output", str(out), "--spool", str(spool),
               "--port", "0"] + (["--config", str(config)] if config else [])
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        stop = threading.Event()
        try:
            port = wait_port(log, proc)
            time.sleep(2.0)  # the job is submitted after the gateway listens: let the source start
            sampler = threading.Thread(target=sample, args=(out, spool, stop, trial.samples), daemon=True)
            sampler.start()
            if webhook:
                webhook.alarms.clear()
            try:
                asyncio.run(load(port, traffic, trial, spike_every, concurrency))
            except (TimeoutError, OSError) as err:
                trial.ended = time.time()
                trial.failed = f"load stopped: {err}"
            time.sleep(settle)  # late notifications and rows of the last intervals
            if proc.poll() is not None or b"dpipe stream: failed" in log.read_bytes():
                text = log.read_text(errors="replace")
                errors = re.findall(r"^\w*Error: .*$", text, re.M)
                trial.failed = f"the stream failed: {errors[-1] if errors else text[-300:]}"
        finally:
            stop.set()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if webhook:
            trial.alarms = list(webhook.alarms)
    return trial


def wait_port(log: Path, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        found = re.search(rb"gateway on http://127.0.0.1:(\d+)", log.read_bytes())
        if found:
            return int(found.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"the stream did not start: {log.read_text()[-2000:]}")


def max_sustainable(traffic: Traffic, config: Path | None, start: int, seconds: float, cap: int,
                    steps: int = 2, known_bad: int | None = None) -> tuple[int, list[tuple[int, bool, float]]]:
    """Double from `start` while bounded, then bisect `steps` times: (best bounded rate, trials)."""
    trials: list[tuple[int, bool, float]] = []

    def ok(rate: int) -> bool:
        t = run_trial(traffic, rate, seconds, config, None, None)
        good = t.bounded()
        trials.append((rate, good, t.achieved))
        print(f"  trial {rate:,} lines/s for {seconds:.0f} s: achieved {t.achieved:,.0f}, unread at the end "
              f"{(t.samples.backlog[-1][1] if t.samples.backlog else 0) / 2**20:.1f} MiB (spool "
              f"{(t.samples.spool[-1][1] if t.samples.spool else 0) / 2**20:.1f} MiB), "
              f"{'bounded' if good else 'GROWING'}" + (f" ({t.failed})" if t.failed else ""), flush=True)
        return good

    good, bad = 0, known_bad
    rate = start
    while rate <= cap and (bad is None or rate < bad):
        if ok(rate):
            good, rate = rate, rate * 2
        else:
            bad = rate
            break
    if good and bad is not None and good >= bad:
        bad = None
    if bad is not None:
        lo, hi = good, bad
        for _ in range(steps):
            mid = (lo + hi) // 2 // 1000 * 1000
            if mid <= lo or mid >= hi:
                break
            if ok(mid):
                lo = mid
            else:
                hi = mid
        good = lo
    return good, trials


def pool_archive(work: Path, lines: int) -> Path:
    """A generated day of plain files: the mix the steady load replays."""
    generate(work / "archive", Spec(lines=lines, days=1, users=20_000, seed=5, compression="none"))
    return work / "archive" / "logs"


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]
