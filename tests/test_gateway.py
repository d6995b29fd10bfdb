"""The HTTP gateway on a real loopback server: what it accepts, what it refuses and why, what it makes durable."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

from connectors.gateway.service import GatewayThread
from connectors.gateway.settings import GatewaySettings, load_settings
from connectors.gateway.spool import list_segments, spool_bytes, spool_lines
from pipelines.config import load_config
from pipelines.gateway import main
from pipelines.validation import ConfigError

TOKEN_A = "token-of-project-a-0123456789"
TOKEN_B = "token-of-project-b-0123456789"


def call(url: str, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Message, Any]:
    """One request on its own connection: (status, headers, JSON body or text)."""
    address = urlsplit(url)
    conn = http.client.HTTPConnection(address.hostname, address.port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=not isinstance(body, bytes | None))
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    is_json = response.headers.get("Content-Type", "").startswith("application/json")
    return response.status, response.headers, orjson.loads(data) if is_json else data.decode()


def post(url: str, category: str, body: bytes, **headers: str) -> tuple[int, Message, Any]:
    return call(url, "POST", f"/v1/logs/{category}", body, {k.replace("_", "-"): v for k, v in headers.items()})


def test_accepted_lines_are_in_the_spool_byte_exact_with_offsets(start: Callable[..., GatewayThread],
                                                                  tmp_path: Path) -> None:
    gateway = start()
    status, _, answer = post(gateway.url, "pv", b'us,1389000000,{"a":1}\r\n\nfr,1389000001,{}\nde,1389,not json')
    assert (status, answer) == (200, {"accepted": 3})
    assert post(gateway.url, "mongo_err", b"th,1389000002,{}\n")[2] == {"accepted": 1}
    assert post(gateway.url, "pv", b"\n\n")[2] == {"accepted": 0}
    assert post(gateway.url, "pv", b"nl,1389000003,{}\n")[2] == {"accepted": 1}
    assert spool_lines(tmp_path / "spool") == [  # lines are bytes: not parsed, not validated here
        ("0000000000000000.pv", 0, b'us,1389000000,{"a":1}'),
        ("0000000000000000.pv", 22, b"fr,1389000001,{}"),
        ("0000000000000000.pv", 39, b"de,1389,not json"),
        ("0000000000000000.pv", 56, b"nl,1389000003,{}"),
        ("0000000000000001.mongo_err", 0, b"th,1389000002,{}"),
    ]


class GatedSink:
    """A LineSink that holds every append until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.lines: list[bytes] = []

    async def append(self, category: str, lines: list[bytes], key: str | None = None) -> bool:
        while not self.gate.is_set():
            await asyncio.sleep(0.01)
        self.lines += lines
        return True

    def full(self) -> bool:
        return False

    def healthy(self) -> bool:
        return True

    def stats(self) -> dict[str, float]:
        return {}

    async def close(self) -> None:
        pass


def test_the_answer_waits_for_the_sink_and_in_flight_posts_are_bounded(tmp_path: Path) -> None:
    sink = GatedSink()
    with GatewayThread(GatewaySettings(port=0, max_in_flight=1), sink) as gateway:
        answers: list[Any] = []
        client = threading.Thread(target=lambda: answers.append(post(gateway.url, "pv", b"a,1,{}\nb,2,{}")))
        client.start()
        client.join(0.5)
        assert client.is_alive() and not answers  # no 200 before the lines are durable
        status, headers, answer = post(gateway.url, "pv", b"c,3,{}")
        assert (status, headers["Retry-After"], answer) == (429, "1", {"error": "1 requests in flight; retry later"})
        sink.gate.set()
        client.join(10)
    assert answers[0][:3:2] == (200, {"accepted": 2}) and sink.lines == [b"a,1,{}", b"b,2,{}"]


def test_gzip_bodies_single_and_multi_member(start: Callable[..., GatewayThread], tmp_path: Path) -> None:
    gateway = start()
    body = gzip.compress(b"us,1,{}\nfr,2,{}\n") + gzip.compress(b"de,3,{}")
    assert post(gateway.url, "pv", body, Content_Encoding="gzip")[:3:2] == (200, {"accepted": 3})
    assert [line for *_, line in spool_lines(tmp_path / "spool")] == [b"us,1,{}", b"fr,2,{}", b"de,3,{}"]


@pytest.mark.parametrize(("settings", "request_args", "status", "message"), [
    ({}, ("POST", "/v1/logs/9lives", b"x"), 400, "bad category name '9lives'"),
    ({}, ("POST", "/v1/logs/pv", b"not gzip", {"Content-Encoding": "gzip"}), 400, "not valid gzip"),
    ({}, ("POST", "/v1/logs/pv", gzip.compress(b"a,1,{}\n")[:-6], {"Content-Encoding": "gzip"}), 400, "truncated"),
    ({}, ("POST", "/v1/logs/pv", b"x", {"Content-Encoding": "br"}), 415, "Content-Encoding br not supported"),
    ({"max_body_bytes": 1000}, ("POST", "/v1/logs/pv", b"a,1,{}\n" * 200), 413, "larger than 1000 bytes"),
    ({"max_body_bytes": 1000}, ("POST", "/v1/logs/pv", iter([b"a,1,{}\n" * 100] * 3)), 413,
     "larger than 1000 bytes"),  # chunked: no Content-Length to check first
    ({"max_body_bytes": 100_000}, ("POST", "/v1/logs/pv", gzip.compress(b"0" * 200_000),
                                   {"Content-Encoding": "gzip"}), 413, "decompressed body is larger than 100000"),
    ({"max_line_bytes": 10}, ("POST", "/v1/logs/pv", b"a,1,{}\n\nb,1,{\"long\":1}\n"), 413,
     "line 3 is 14 bytes; the limit is 10"),
    ({"max_lines": 2}, ("POST", "/v1/logs/pv", b"a,1,{}\nb,1,{}\nc,1,{}\n"), 413, "3 lines in one request"),
    ({}, ("GET", "/v1/logs/pv"), 405, "GET not allowed; use POST"),
    ({}, ("POST", "/healthz", b""), 405, "POST not allowed; use GET"),
    ({}, ("GET", "/v2/logs"), 404, "no such path: /v2/logs"),
])
def test_refusals_say_why(start: Callable[..., GatewayThread], tmp_path: Path, settings: dict[str, Any],
                          request_args: tuple[Any, ...], status: int, message: str) -> None:
    gateway = start(**settings)
    got, _, answer = call(gateway.url, *request_args)
    assert got == status and message in answer["error"]
    assert post(gateway.url, "pv", b"ok,1,{}")[0] == 200  # the gateway still serves
    assert [line for *_, line in spool_lines(tmp_path / "spool")] == [b"ok,1,{}"]  # nothing refused was kept


def test_tokens(start: Callable[..., GatewayThread]) -> None:
    gateway = start(tokens=[{"project": "a", "token": TOKEN_A},
                            {"project": "b", "token": TOKEN_B, "categories": ["pv", "mongo*"]}])
    status, headers, answer = post(gateway.url, "pv", b"a,1,{}")
    assert (status, answer["error"], headers["WWW-Authenticate"]) == (401, "missing bearer token", "Bearer")
    assert post(gateway.url, "pv", b"a,1,{}", Authorization="Bearer nope")[:3:2] == (
        401, {"error": "invalid bearer token"})
    assert post(gateway.url, "click", b"a,1,{}", Authorization=f"Bearer {TOKEN_B}")[:3:2] == (
        403, {"error": "project b may not post to category click"})
    for category, token in (("click", TOKEN_A), ("pv", TOKEN_B), ("mongoErr", TOKEN_B)):
        assert post(gateway.url, category, b"a,1,{}", Authorization=f"Bearer {token}")[0] == 200


def test_full_spool_answers_429_with_retry_after(start: Callable[..., GatewayThread]) -> None:
    gateway = start(max_spool_bytes=140)
    assert post(gateway.url, "pv", b"a,1,{}\n" * 21)[0] == 429  # 147 bytes would pass the bound: not written
    assert post(gateway.url, "pv", b"a,1,{}\n" * 20)[0] == 200  # 140 bytes: now at the limit
    status, headers, answer = post(gateway.url, "pv", b"b,1,{}")
    assert (status, headers["Retry-After"], answer) == (429, "1", {"error": "spool full; retry later"})
    assert spool_bytes(gateway.settings.spool) == 140


def test_shutting_down_answers_503_with_retry_after(start: Callable[..., GatewayThread]) -> None:
    gateway = start()
    assert gateway.server is not None
    gateway.server.gateway.draining = True  # what stop() does first
    status, headers, answer = post(gateway.url, "pv", b"a,1,{}")
    assert (status, headers["Retry-After"], answer) == (503, "5", {"error": "shutting down"})


def test_healthz_and_a_full_disk_that_frees_up(start: Callable[..., GatewayThread], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = start()
    assert call(gateway.url, "GET", "/healthz")[:3:2] == (200, {"status": "ok"})
    real, full = os.fdatasync, {"on": True}

    def disk(fd: int) -> None:
        if full["on"]:
            raise OSError(28, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", disk)
    status, headers, answer = post(gateway.url, "pv", b"a,1,{}")
    assert (status, headers["Retry-After"]) == (507, "5") and "No space left on device" in answer["error"]
    assert call(gateway.url, "GET", "/healthz")[0] == 200  # the writer lives on
    full["on"] = False
    assert post(gateway.url, "pv", b"b,2,{}")[0] == 200  # recovered without a restart
    assert [line for *_, line in spool_lines(tmp_path / "spool")] == [b"b,2,{}"]  # the refused line is gone


def test_metrics_count_requests_lines_bytes_and_fsyncs(start: Callable[..., GatewayThread]) -> None:
    gateway = start()
    post(gateway.url, "pv", b"a,1,{}\nb,2,{}\n")
    post(gateway.url, "pv", gzip.compress(b"c,3,{}\n"), Content_Encoding="gzip")
    post(gateway.url, "9", b"x")
    call(gateway.url, "GET", "/nowhere")
    status, headers, text = call(gateway.url, "GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    values = dict(re.findall(r"^(\S+) (\S+)$", text, re.MULTILINE))
    assert values['dpipe_gateway_requests_total{code="200"}'] == "2"
    assert values['dpipe_gateway_requests_total{code="400"}'] == "1"
    assert values['dpipe_gateway_requests_total{code="404"}'] == "1"
    assert values["dpipe_gateway_lines_total"] == "3"
    assert values["dpipe_gateway_bytes_total"] == "21"
    assert values["dpipe_sink_spool_bytes"] == "21"
    assert values["dpipe_gateway_sink_full"] == "0"
    assert values["dpipe_sink_fsync_seconds_count"] == "2" and float(values["dpipe_sink_fsync_seconds_sum"]) > 0
    assert "# TYPE dpipe_sink_fsync_seconds summary" in text


def test_startup_recovers_a_crashed_spool(start: Callable[..., GatewayThread], tmp_path: Path) -> None:
    segments = tmp_path / "spool" / "segments"
    segments.mkdir(parents=True)
    (segments / "0000000000000007.pv.open").write_bytes(b"a,1,{}\nb,2,{\"cut")
    gateway = start()
    assert [s.path.name for s in list_segments(tmp_path / "spool")] == ["0000000000000007.pv.seg"]
    assert post(gateway.url, "pv", b"c,3,{}")[0] == 200
    assert spool_lines(tmp_path / "spool") == [("0000000000000007.pv", 0, b"a,1,{}"),
                                               ("0000000000000008.pv", 0, b"c,3,{}")]


def test_config_errors_name_the_file_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "job.yaml"
    config.write_text("name: x\ngateway:\n  max_body_byte: 10\n  tokens: [{project: a, token: short}]\n")
    assert main(["--spool", str(tmp_path / "s"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{config}: gateway.max_body_byte: unknown key; expected one of: host, port, spool" in err
    assert f"{config}: gateway.tokens.0.token: String should have at least 16 characters" in err
    assert "Traceback" not in err and "short" not in err  # a token is never echoed
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: no such config file" in capsys.readouterr().err


def test_sizes_and_durations_take_units_as_in_the_rest_of_the_job_config(tmp_path: Path) -> None:
    config = tmp_path / "job.yaml"
    config.write_text("read: {chunk_bytes: 16MiB}\ngateway:\n  max_body_bytes: 16MiB\n  max_line_bytes: 512KiB\n"
                      "  max_in_flight_bytes: 1GiB\n  max_spool_bytes: 10GB\n  segment_bytes: 64MB\n"
                      "  read_timeout: 1500ms\n  body_timeout: 2m\n  drain_seconds: 3s\n  segment_seconds: 1m\n"
                      "  idempotency_seconds: 2h\n")
    settings = load_settings(config, drain_seconds="10s")
    assert settings.max_body_bytes == load_config(config).read.chunk_bytes == 16 * 2**20
    assert (settings.max_line_bytes, settings.max_in_flight_bytes, settings.max_spool_bytes,
            settings.segment_bytes) == (512 * 2**10, 2**30, 10 * 10**9, 64 * 10**6)
    assert (settings.read_timeout, settings.body_timeout, settings.segment_seconds,
            settings.idempotency_seconds) == (1.5, 120.0, 60.0, 7200.0)
    assert settings.drain_seconds == 10.0  # the command line's override, with its unit
    assert load_config(config).gateway == settings.model_copy(update={"drain_seconds": 3.0}), "one loader, one answer"
    assert load_settings(None).max_body_bytes == 16 * 2**20 and load_settings(None, port=0).port == 0


@pytest.mark.parametrize(("setting", "expected"), [
    ("max_body_bytes: 16 megs", "gateway.max_body_bytes: expected a positive size such as 64MiB, 512KB or a "
                                "number of bytes; got '16 megs'"),
    ("max_spool_bytes: 0", "gateway.max_spool_bytes: expected a positive size"),
    ("read_timeout: soon", "gateway.read_timeout: expected a duration such as 90s, 15m, 12h or 7d"),
    ("segment_seconds: 0s", "gateway.segment_seconds: Input should be greater than 0"),
    ("max_lines: 0", "gateway.max_lines: Input should be greater than 0"),
])
def test_a_bad_setting_is_one_line_with_file_key_and_what_was_expected(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str, expected: str) -> None:
    config = tmp_path / "job.yaml"
    config.write_text(f"gateway:\n  {setting}\n")
    assert main(["--spool", str(tmp_path / "s"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dpipe: {config}: {expected}") and len(err.strip().splitlines()) == 1, err
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_config(config)  # the pipeline's loader says the same of the same section


def test_a_bad_command_line_value_is_one_line_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--spool", str(tmp_path / "s"), "--drain_seconds", "later", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dpipe: <command line>: gateway.drain_seconds: expected a duration"), err
    assert main(["--port", "0"]) == 2
    assert "no spool directory: pass --spool DIR" in capsys.readouterr().err


# ---- kill -9 in the middle of a stream ----


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll until `condition()` holds (a deadline, never a fixed wait)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class GatewayProcess:
    """`python -m pipelines.gateway` on a free port; `url` once it listens."""

    def __init__(self, spool: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "pipelines.gateway", "--spool", str(spool), "--port", "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()
        match = re.search(r"listening on (http://\S+)", ready)
        assert match, f"the gateway did not start: {ready!r}"
        self.url = match[1]

    def stop(self, signum: int) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(30)


@pytest.mark.integration
def test_kill_9_loses_no_acknowledged_line_and_leaves_no_partial_line(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    current = {"url": ""}
    acked: list[str] = []
    outcomes: Counter[str] = Counter()
    stop = threading.Event()

    def hammer(worker: int) -> None:
        for n in range(100_000):  # bounded; stops long before
            if stop.is_set():
                return
            ids = [f"w{worker}-{n}-{i}" for i in range(200)]
            body = b"".join(b'us,1389000000,{"id":"%s","pad":"%s"}\n' % (i.encode(), b"x" * 150) for i in ids)
            try:
                status = post(current["url"], "pv", body)[0]
            except OSError:
                outcomes["connection error"] += 1
                time.sleep(0.02)
                continue
            outcomes[str(status)] += 1
            if status == 200:
                acked.extend(ids)

    first = GatewayProcess(spool)
    current["url"] = first.url
    workers = [threading.Thread(target=hammer, args=(w,)) for w in range(4)]
    for worker in workers:
        worker.start()
    wait_until(lambda: len(acked) >= 4000, "lines acknowledged before the kill")
    acked_before_kill = len(acked)
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL
    wait_until(lambda: outcomes["connection error"] > 0, "requests failing while nothing listens")
    second = GatewayProcess(spool)
    current["url"] = second.url
    wait_until(lambda: len(acked) >= acked_before_kill + 4000, "lines acknowledged after the restart")
    stop.set()
    for worker in workers:
        worker.join(30)
    assert second.stop(signal.SIGTERM) == 0  # graceful: flushes, seals, exits 0

    assert acked_before_kill > 0 and len(acked) > acked_before_kill, outcomes
    assert outcomes["connection error"] > 0, outcomes  # the kill did hit the stream
    segments = list_segments(spool)
    assert segments and all(s.sealed for s in segments)
    seen: Counter[str] = Counter()
    for segment in segments:
        data = segment.path.read_bytes()
        assert data.endswith(b"\n"), f"{segment.name} ends in a partial line"
        for line in data.splitlines():
            payload = orjson.loads(line.split(b",", 2)[2])  # every line whole and intact
            assert payload["pad"] == "x" * 150
            seen[payload["id"]] += 1
    assert not [i for i in acked if seen[i] != 1], "acknowledged lines missing or repeated"
    assert max(seen.values()) == 1  # nothing was written twice (the client never retries the same ids)
