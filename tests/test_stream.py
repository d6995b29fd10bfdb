"""End to end over loopback: `pipelines.stream` on Prism reading the spool of a separate gateway process.

Collectors POST lines with an error spike; the events are archived and the alarm raised within a bounded
time; the gateway is killed with SIGKILL mid-stream and restarted: every acknowledged line is archived, and
no line twice (counted by document id). Also the Pub/Sub path: the gateway publishes to Google's in-memory
Pub/Sub server and `--source pubsub` archives every line.
"""

from __future__ import annotations

import http.client
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson
import pyarrow.dataset as ds
import pytest

from tests.servers.pubsub import PubSubServer
from transforms.category import category_from_path

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
JOB = """
routes:
  - {name: errors, match: {category: error}}
alarms:
  rules:
    - {name: spike, route: errors, group_by: [area], window: {size: 10s, period: 5s},
       condition: {threshold: 300}, severity: 4, cooldown: 1m}
  console: {colour: false}
"""
_ids = itertools.count()


def lines(area: str, category: str, n: int) -> list[bytes]:
    now = int(time.time() * 1000)
    return [b'%s,%d,{"id":%d,"message":"%s happened"}' % (area.encode(), now, next(_ids), category.encode())
            for _ in range(n)]


def post(port: int, category: str, body: list[bytes], key: str | None = None) -> int:
    """One request (with an Idempotency-Key if given); the status, or 0 when the gateway is not there (killed:
    the client gives up on it)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", f"/v1/logs/{category}", b"\n".join(body), {"Idempotency-Key": key} if key else {})
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return 0


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, env=ENV, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)


def wait_for(what: str, check, timeout: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended ({proc.returncode}): {log.read_text()[-3000:]}")
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout} s" + (f"\n{log.read_text()[-3000:]}" if log else ""))


def gateway_port(log: Path) -> int | None:
    found = re.search(rb"listening on http://127.0.0.1:(\d+)", log.read_bytes()) if log.exists() else None
    return int(found.group(1)) if found else None


def archived(out: Path) -> list[dict]:
    if not (out / "events").exists():
        return []
    table = ds.dataset(out / "events", format="parquet", partitioning="hive").to_table(columns=["_id", "payload"])
    return table.to_pylist()


def alarms(out: Path) -> list[dict]:
    return [orjson.loads(line) for f in (out / "alarms").glob("*.jsonl") for line in f.read_bytes().splitlines()]


@pytest.fixture
def stopped() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:  # SIGTERM first: a stream then stops its Prism and gateway (a kill would orphan them)
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_gateway_spool_stream_archive_and_alarm_survive_a_killed_gateway(tmp_path: Path, stopped) -> None:
    check_killed_gateway_case(tmp_path, stopped)


def check_killed_gateway_case(tmp_path: Path, stopped: list[subprocess.Popen[bytes]],
                              beam_args: Sequence[str] = ()) -> None:
    """The end-to-end case, on the default runner or on the one `beam_args` name (tests/test_cluster_shape.py)."""
    spool, out = tmp_path / "spool", tmp_path / "out"
    (tmp_path / "job.yaml").write_text(JOB)
    stream_log, gw_log = tmp_path / "stream.log", tmp_path / "gateway.log"
    stream = start(["pipelines.stream", "--output", str(out), "--config", str(tmp_path / "job.yaml"),
                    "--spool", str(spool), "--no_gateway", *beam_args], stream_log)
    stopped.append(stream)
    gateway = start(["pipelines.gateway", "--spool", str(spool), "--port", "0"], gw_log)
    stopped.append(gateway)
    port = wait_for("gateway", lambda: gateway_port(gw_log), 30, gateway, gw_log)

    acked: list[bytes] = []
    lock = threading.Lock()

    def collector(area: str, category: str, requests: int, size: int) -> None:
        for _ in range(requests):
            body = lines(area, category, size)
            if post(port_box[0], category, body) == 200:
                with lock:
                    acked.extend(body)

    port_box = [port]
    spike = [threading.Thread(target=collector, args=("fr", "error", 8, 100)),
             threading.Thread(target=collector, args=("us", "pv", 20, 200)),
             threading.Thread(target=collector, args=("de", "error", 2, 20))]
    for t in spike:
        t.start()
    for t in spike:
        t.join()
    first_wave = len(acked)
    assert first_wave == 8 * 100 + 20 * 200 + 2 * 20

    started = time.monotonic()
    fired = wait_for("the spike's alarm", lambda: [a for a in alarms(out) if a["rule"] == "spike"], 90,
                     stream, stream_log)
    assert {a["key"]["area"] for a in fired} == {"fr"}, "quiet areas raise no alarm"
    assert fired[0]["value"] >= 300 and time.monotonic() - started < 90

    # kill -9 the gateway while collectors post; restart it on the same spool; go on
    busy = [threading.Thread(target=collector, args=("us", "pv", 60, 100)) for _ in range(3)]
    for t in busy:
        t.start()
    wait_for("more acknowledged lines", lambda: len(acked) > first_wave + 500, 30)
    gateway.send_signal(signal.SIGKILL)
    gateway.wait()
    gw_log2 = tmp_path / "gateway2.log"
    gateway = start(["pipelines.gateway", "--spool", str(spool), "--port", "0"], gw_log2)
    stopped.append(gateway)
    port_box[0] = wait_for("restarted gateway", lambda: gateway_port(gw_log2), 30, gateway, gw_log2)
    for t in busy:
        t.join()
    collector("us", "pv", 10, 100)
    assert len(acked) > first_wave + 1000

    want = {orjson.loads(line.split(b",", 2)[2])["id"] for line in acked}

    def all_archived() -> list[dict] | None:
        rows = archived(out)
        got = {orjson.loads(r["payload"])["id"] for r in rows}
        return rows if want <= got else None

    rows = wait_for("every acknowledged line archived", all_archived, 120, stream, stream_log)
    ids = [r["_id"] for r in rows]
    assert len(ids) == len(set(ids)), "a line was archived twice"
    payload_ids = [orjson.loads(r["payload"])["id"] for r in rows]
    assert len(payload_ids) == len(set(payload_ids)), "a line was read twice from the spool"

    stream.send_signal(signal.SIGTERM)
    assert stream.wait(60) == 0, stream_log.read_text()[-3000:]


def test_pubsub_gateway_to_stream(tmp_path: Path, stopped) -> None:
    server = PubSubServer()
    server.start(tmp_path / "pstest.log")
    try:
        os.environ.update(server.env())
        ENV.update(server.env())
        server.create_topic("dpipe-test", "logs")
        server.create_subscription("dpipe-test", "logs", "dpipe")
        out, gw_log, stream_log = tmp_path / "out", tmp_path / "gateway.log", tmp_path / "stream.log"
        gateway = start(["pipelines.gateway", "--port", "0", "--pubsub_topic", "projects/dpipe-test/topics/logs"],
                        gw_log)
        stopped.append(gateway)
        port = wait_for("gateway", lambda: gateway_port(gw_log), 30, gateway, gw_log)
        stream = start(["pipelines.stream", "--output", str(out), "--source", "pubsub",
                        "--subscription", "projects/dpipe-test/subscriptions/dpipe"], stream_log)
        stopped.append(stream)
        sent = [*lines("fr", "error", 300), b"broken line"]
        assert post(port, "error", sent[:150]) == 200 and post(port, "mongo_err", sent[150:]) == 200

        def done() -> list[dict] | None:
            rows = archived(out)
            return rows if len(rows) == 300 else None

        rows = wait_for("every published line archived", done, 90, stream, stream_log)
        assert {orjson.loads(r["payload"])["id"] for r in rows} == {
            orjson.loads(line.split(b",", 2)[2])["id"] for line in sent[:300]}
        assert {p.name for p in (out / "events").iterdir()} == {"category=error", "category=mongoErr"}
        dead = wait_for("the dead letter", lambda: [orjson.loads(line) for f in (out / "deadletter").glob("*.jsonl")
                                                    for line in f.read_bytes().splitlines()], 30)
        assert dead[0]["raw"] == "broken line" and dead[0]["source"].startswith("pubsub/")
        stream.send_signal(signal.SIGTERM)
        assert stream.wait(60) == 0, stream_log.read_text()[-3000:]
    finally:
        server.stop()
        for key in server.env():
            os.environ.pop(key, None)


def test_the_whole_engine_template_streams(sample, tmp_path: Path, stopped) -> None:
    """Every branch of the demo job runs unbounded on Prism: every line lands, each analysis writes results."""
    logs, _ = sample
    out, log = tmp_path / "out", tmp_path / "stream.log"
    stream = start(["pipelines.stream", "--output", str(out), "--spool", str(tmp_path / "spool"), "--port", "0",
                    "--config", str(ROOT / "templates" / "jobs" / "engine.als.yaml")], log)
    stopped.append(stream)
    port = wait_for("stream", lambda: (m := re.search(rb"gateway on http://127.0.0.1:(\d+)", log.read_bytes()))
                    and int(m.group(1)), 60, stream, log)
    posted = 0
    for path in sorted(logs.iterdir()):
        if path.suffix == ".gz":
            continue
        body = [line for line in path.read_bytes().split(b"\n") if line]  # the gateway skips empty lines
        category = category_from_path(str(path))
        for i in range(0, len(body), 1000):
            assert post(port, category, body[i:i + 1000]) == 200
        posted += len(body)

    def landed() -> bool:
        events = len(archived(out))
        dead = sum(f.read_bytes().count(b"\n") for f in (out / "deadletter").glob("*.jsonl"))
        return events + dead == posted

    wait_for("every posted line archived or dead-lettered", landed, 120, stream, log)
    live = ("counters", "cardinality", "stats", "behaviour")  # running panes every 10 s of processing time
    wait_for("every analysis sink but funnels", lambda: all(list((out / s).rglob("part-*")) for s in live),
             60, stream, log)
    stream.send_signal(signal.SIGTERM)
    assert stream.wait(60) == 0, log.read_text()[-3000:]
    # funnel counts run every FUNNEL_REFRESH_S (60 s); a clean stop publishes what they have so far
    assert sum(f.read_bytes().count(b"\n") for f in (out / "funnels").rglob("part-*")), log.read_text()[-3000:]
