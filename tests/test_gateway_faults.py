"""Faults and hostile clients against the gateway, on real loopback servers: poison categories, aliasing
tokens, slow and huge clients, a full disk, too few file descriptors, stops with stalled posts, kill -9 under
retrying clients. Each test waits for what it observes (a 429, a process gone), never for a fixed time."""

from __future__ import annotations

import datetime
import http.client
import json
import re
import resource
import signal
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.gateway.service import GatewayThread
from connectors.gateway.settings import GatewaySettings
from connectors.gateway.spool import list_segments, spool_lines
from tests.servers.gateway import GatewayProcess
from tests.test_gateway import TOKEN_A, TOKEN_B, call, post, wait_until


def spooled(spool: Path) -> list[bytes]:
    return [line for *_, line in spool_lines(spool)]


def raw_request(port: int, data: bytes) -> bytes:
    """Send bytes as they are, read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def test_a_poison_category_is_refused_and_ingest_goes_on(start: Callable[..., GatewayThread],
                                                         tmp_path: Path) -> None:
    gateway = start()
    status, _, answer = post(gateway.url, "c" * 234, b"us,1400000000,{}")
    assert status == 400 and "at most 100 characters" in answer["error"]
    assert post(gateway.url, "c" * 100, b"us,1400000000,{}")[0] == 200  # the bound itself is fine
    assert post(gateway.url, "pv", b"us,1400000001,{}")[0] == 200
    assert call(gateway.url, "GET", "/healthz")[0] == 200
    assert spooled(tmp_path / "spool") == [b"us,1400000000,{}", b"us,1400000001,{}"]
    # the longest segment name the spool can hold still gives the stream a file name far below 255 bytes
    longest = max(s.name for s in list_segments(tmp_path / "spool"))
    assert len(f"part-{longest}-999999.parquet") < 200


@pytest.mark.parametrize(("globs", "allowed", "refused"), [
    (["mongo_*"], ["mongo_err", "mongoErr", "mongo_slow"], ["mongerr", "pv"]),
    (["mongoErr"], ["mongoErr", "mongo_err"], ["mongo_slow", "mongoerr", "MongoErr"]),
    (["mongo_slow"], ["mongoSlow"], ["mongo_err", "mongoErr"]),  # aliasing: both spellings refused
    (["p?"], ["pv", "p1"], ["p", "pvx"]),
    (["[a-c]*"], ["a", "click"], ["dau", "Click"]),
    (["*"], ["anything", "a_b_c"], []),
])
def test_token_globs_match_the_archives_category_names(start: Callable[..., GatewayThread], globs: list[str],
                                                       allowed: list[str], refused: list[str]) -> None:
    gateway = start(tokens=[{"project": "b", "token": TOKEN_B, "categories": globs}])
    auth = {"Authorization": f"Bearer {TOKEN_B}"}
    assert {c: post(gateway.url, c, b"a,1,{}", **auth)[0] for c in allowed + refused} == {
        **{c: 200 for c in allowed}, **{c: 403 for c in refused}}


def test_metrics_need_a_token_when_tokens_are_on(start: Callable[..., GatewayThread]) -> None:
    gateway = start(tokens=[{"project": "a", "token": TOKEN_A}])
    assert call(gateway.url, "GET", "/metrics")[0] == 401
    assert call(gateway.url, "GET", "/metrics", headers={"Authorization": "Bearer wrong-token-0123456789"})[0] == 401
    status, _, text = call(gateway.url, "GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN_A}"})
    assert status == 200 and "dpipe_gateway_requests_total" in text
    assert call(gateway.url, "GET", "/healthz")[0] == 200  # probes stay open


def test_a_token_over_its_rate_gets_429_with_retry_after(start: Callable[..., GatewayThread]) -> None:
    gateway = start(tokens=[{"project": "a", "token": TOKEN_A, "max_requests_per_second": 2},
                            {"project": "b", "token": TOKEN_B}])
    answers = [post(gateway.url, "pv", b"a,1,{}", Authorization=f"Bearer {TOKEN_A}") for _ in range(5)]
    limited = [a for a in answers if a[0] == 429]
    assert limited and "project a is over 2 requests/s" in limited[0][2]["error"]
    assert int(limited[0][1]["Retry-After"]) >= 1
    assert post(gateway.url, "pv", b"a,1,{}", Authorization=f"Bearer {TOKEN_B}")[0] == 200  # per token
    wait_until(lambda: post(gateway.url, "pv", b"a,1,{}", Authorization=f"Bearer {TOKEN_A}")[0] == 200,
             "the bucket to refill")


def test_http_0_9_request_lines_are_refused(start: Callable[..., GatewayThread], tmp_path: Path) -> None:
    gateway = start()
    assert gateway.server is not None
    answer = raw_request(gateway.server.port, b"POST /v1/logs/pv\r\nContent-Length: 7\r\n\r\na,1,{}\n")
    assert b" 400 " in answer.split(b"\r\n")[0] and b"HTTP/0.9 is not supported" in answer
    assert spooled(tmp_path / "spool") == []


def test_an_idempotency_key_acknowledges_a_retry_without_writing_it_again(start: Callable[..., GatewayThread],
                                                                         tmp_path: Path) -> None:
    gateway = start()
    assert post(gateway.url, "pv", b"a,1,{}\nb,2,{}", Idempotency_Key="f1:0-14")[2] == {"accepted": 2}
    assert post(gateway.url, "pv", b"a,1,{}\nb,2,{}", Idempotency_Key="f1:0-14")[2] == {
        "accepted": 2, "duplicate": True}
    assert post(gateway.url, "pv", b"c,3,{}", Idempotency_Key="f1:14-21")[0] == 200
    assert post(gateway.url, "pv", b"x", Idempotency_Key="bad\x7fkey")[0] == 400
    assert spooled(tmp_path / "spool") == [b"a,1,{}", b"b,2,{}", b"c,3,{}"]


def test_stalled_bodies_time_out_and_free_their_slots(start: Callable[..., GatewayThread]) -> None:
    gateway = start(max_in_flight=4, read_timeout=0.5)
    assert gateway.server is not None
    port, state = gateway.server.port, gateway.server.gateway
    stalled = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(4)]
    for s in stalled:  # slowloris: headers promise 10 bytes, then nothing
        s.sendall(b"POST /v1/logs/pv HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
    wait_until(lambda: state.in_flight == 4, "the stalled posts to hold every slot")
    assert post(gateway.url, "pv", b"a,1,{}")[0] == 429
    wait_until(lambda: post(gateway.url, "pv", b"a,1,{}")[0] == 200, "a slot freed by the read timeout")
    for s in stalled:
        answer = s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        s.close()


# ---- the gateway as a process: logs, signals, resource limits ----


@pytest.fixture
def process(tmp_path: Path) -> Iterator[Callable[..., GatewayProcess]]:
    started: list[GatewayProcess] = []

    def run(*args: str, limits: dict[int, tuple[int, int]] | None = None, spool: Path | None = None,
            log: str = "gateway.log") -> GatewayProcess:
        gateway = GatewayProcess(spool or tmp_path / "spool", *args, limits=limits)
        gateway.start(tmp_path / log)
        started.append(gateway)
        return gateway

    yield run
    for gateway in started:
        gateway.stop()


def test_malformed_requests_are_one_log_line_each_never_a_traceback(
        process: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    gateway = process()
    bad = [b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
           b"POST /v1/logs/pv HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
           b"\x16\x03\x01\x02\x00junk\r\n\r\n",
           b"POST /v1/logs/9lives HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
           b"POST /v1/logs/pv\r\n\r\n"]
    for data in bad:
        assert b" 400 " in raw_request(gateway.port, data).split(b"\r\n")[0]
    assert gateway.signal(signal.SIGTERM) == 0
    log = (tmp_path / "gateway.log").read_text()
    assert "Traceback" not in log, log
    refusals = [line for line in log.splitlines() if "WARNING" in line]
    assert len(refusals) == len(bad), log


def test_sigterm_with_stalled_posts_drains_within_its_grace_period_and_exits_0(
        process: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    gateway = process("--drain_seconds", "0.5")
    assert post(gateway.url, "pv", b"a,1,{}")[0] == 200  # an open segment to seal
    stalled = [socket.create_connection(("127.0.0.1", gateway.port), timeout=30) for _ in range(3)]
    for s in stalled:
        s.sendall(b"POST /v1/logs/pv HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nb,2,{}\n")
    wait_until(lambda: 'dpipe_gateway_in_flight_bytes 3000' in call(gateway.url, "GET", "/metrics")[2],
             "three stalled posts in flight")
    assert gateway.signal(signal.SIGTERM) == 0  # the default read_timeout (10 s) never fires: the grace does
    log = (tmp_path / "gateway.log").read_text()
    steps = ["SIGTERM: stopping", "new posts get 503; 3 in flight get 0.5 s", "3 requests still in flight after 0.5 s",
             "listener closed", "sealed 1 open segments", "gateway stopped"]
    assert [step for step in steps if step not in log] == [] and "Traceback" not in log, log
    assert all(s.sealed for s in list_segments(tmp_path / "spool"))
    assert spooled(tmp_path / "spool") == [b"a,1,{}"]  # nothing of an unacknowledged post
    for s in stalled:
        s.close()


@pytest.mark.integration
def test_a_full_disk_answers_507_keeps_nothing_refused_and_recovers_when_space_returns(
        process: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    limit = 64 << 10  # RLIMIT_FSIZE: no file of the process may pass 64 KiB, as if the disk were that small
    gateway = process(limits={resource.RLIMIT_FSIZE: (limit, resource.RLIM_INFINITY)})
    acked: list[bytes] = []
    answers: Counter[int] = Counter()
    n = 0
    while answers[507] < 3:  # until the disk is full and has refused three requests
        assert n < 1000, answers
        lines = [b'us,1400000000,{"n":%d,"pad":"%s"}' % (n * 100 + i, b"x" * 60) for i in range(100)]
        status = post(gateway.url, "pv", b"\n".join(lines))[0]
        answers[status] += 1
        if status == 200:
            acked += lines
        n += 1
    assert answers[200] > 0 and set(answers) == {200, 507}, answers
    assert call(gateway.url, "GET", "/healthz")[0] == 200
    assert sorted(spooled(tmp_path / "spool")) == sorted(acked)  # nothing of a refused request stayed
    assert gateway.pid is not None
    resource.prlimit(gateway.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    lines = [b'us,1400000000,{"after":%d}' % i for i in range(100)]
    assert post(gateway.url, "pv", b"\n".join(lines))[0] == 200  # space is back: no restart needed
    acked += lines
    assert gateway.signal(signal.SIGTERM) == 0
    assert sorted(spooled(tmp_path / "spool")) == sorted(acked)
    assert "Traceback" not in (tmp_path / "gateway.log").read_text()


@pytest.mark.integration
def test_hundreds_of_categories_under_a_small_file_descriptor_limit(
        process: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    gateway = process(limits={resource.RLIMIT_NOFILE: (512, 512)})  # one file per category would need 800
    answers: Counter[int] = Counter()

    def client(worker: int) -> None:
        for n in range(100):
            answers[post(gateway.url, f"c{worker}_{n}", b"us,1400000000,{}")[0]] += 1

    clients = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    assert answers == {200: 800}
    text = call(gateway.url, "GET", "/metrics")[2]
    assert int(re.search(r"^dpipe_sink_open_segments (\d+)$", text, re.MULTILINE)[1]) <= 256
    assert gateway.signal(signal.SIGTERM) == 0
    assert len(spooled(tmp_path / "spool")) == 800


def peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) << 10


@pytest.mark.integration
def test_many_concurrent_huge_bodies_stay_within_the_memory_bound(
        process: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    budget = 64 << 20
    config = tmp_path / "job.yaml"
    config.write_text(f"gateway:\n  max_in_flight_bytes: {budget}\n  fsync: false\n")
    gateway = process("--config", str(config))
    assert gateway.pid is not None
    before = peak_rss(gateway.pid)
    body = b"\n".join(b'us,1400000000,{"pad":"%s"}' % (b"%06d" % i * 30) for i in range(20_000))  # 4 MiB
    answers: Counter[int] = Counter()
    barrier = threading.Barrier(64)

    def client() -> None:
        barrier.wait()
        answers[post(gateway.url, "pv", body)[0]] += 1

    clients = [threading.Thread(target=client) for _ in range(64)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    grown = peak_rss(gateway.pid) - before
    assert answers[200] >= 1 and set(answers) <= {200, 429}, answers
    assert grown < 4 * budget, f"peak memory grew by {grown >> 20} MiB for a {budget >> 20} MiB budget"
    assert gateway.signal(signal.SIGTERM) == 0
    assert len(spooled(tmp_path / "spool")) == 20_000 * answers[200]


@pytest.mark.integration
def test_kill_9_with_8_retrying_clients_leaves_no_duplicate(process: Callable[..., GatewayProcess],
                                                           tmp_path: Path) -> None:
    current = {"gateway": process(log="first.log")}
    acked: list[str] = []
    last: dict[int, tuple[str, bytes]] = {}
    outcomes: Counter[str] = Counter()
    stop = threading.Event()

    def send(key: str, body: bytes) -> dict:
        """Post until acknowledged, as a collector does: every failure is retried with the same key."""
        while True:
            try:
                status, _, answer = post(current["gateway"].url, "pv", body, Idempotency_Key=key)
            except OSError:
                outcomes["connection error"] += 1
                time.sleep(0.01)  # the client's back-off while nothing listens
                continue
            outcomes[str(status)] += 1
            if status == 200:
                return answer

    def client(worker: int) -> None:
        for n in range(100_000):
            if stop.is_set():
                return
            ids = [f"w{worker}-{n}-{i}" for i in range(200)]
            body = b"".join(b'us,1400000000,{"id":"%s","pad":"%s"}\n' % (i.encode(), b"x" * 150) for i in ids)
            key = f"w{worker}:{n}"
            if send(key, body).get("duplicate"):
                outcomes["acknowledged as duplicate"] += 1
            last[worker] = (key, body)
            acked.extend(ids)

    clients = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for c in clients:
        c.start()
    wait_until(lambda: len(acked) >= 20_000, "lines acknowledged before the kill")
    assert current["gateway"].signal(signal.SIGKILL) == -signal.SIGKILL
    current["gateway"] = process(log="second.log")
    wait_until(lambda: outcomes["connection error"] > 0, "a client to see the kill")
    acked_at_restart = len(acked)
    wait_until(lambda: len(acked) >= acked_at_restart + 20_000, "lines acknowledged after the restart")
    stop.set()
    for c in clients:
        c.join(60)
    for key, body in last.values():  # an acknowledgement lost on the way: the retry is known, not written
        assert send(key, body) == {"accepted": 200, "duplicate": True}
    assert current["gateway"].signal(signal.SIGTERM) == 0

    seen: Counter[str] = Counter(orjson.loads(line.split(b",", 2)[2])["id"]
                                 for line in spooled(tmp_path / "spool"))
    assert set(seen) == set(acked), "acknowledged lines missing, or unacknowledged ones kept"
    assert [i for i, n in seen.items() if n > 1] == [], "duplicates in the spool"
    print(json.dumps({"acked": len(acked), **outcomes}))


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the `cryptography` package."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls(process: Callable[..., GatewayProcess], tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    gateway = GatewayProcess(tmp_path / "spool", "--tls_cert", str(cert), "--tls_key", str(key))
    gateway.probe = lambda: https_post(gateway.port, cert, b"")  # type: ignore[method-assign]
    gateway.start(tmp_path / "tls.log")
    try:
        assert https_post(gateway.port, cert, b"a,1,{}\n") == (200, {"accepted": 1})
        with pytest.raises(http.client.RemoteDisconnected):  # plain HTTP on the TLS port gets nothing
            post(gateway.url, "pv", b"b,2,{}")
        assert gateway.signal(signal.SIGTERM) == 0
    finally:
        gateway.stop()
    assert spooled(tmp_path / "spool") == [b"a,1,{}"]


def https_post(port: int, cert: Path, body: bytes) -> tuple[int, Any]:
    context = ssl.create_default_context(cafile=str(cert))
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=20, context=context)
    try:
        conn.request("POST", "/v1/logs/pv", body=body)
        response = conn.getresponse()
        return response.status, orjson.loads(response.read())
    finally:
        conn.close()


def test_a_bad_certificate_is_a_one_line_config_error(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.gateway import main

    (tmp_path / "cert.pem").write_text("not a certificate")
    assert main(["--spool", str(tmp_path / "s"), "--tls_cert", str(tmp_path / "cert.pem")]) == 2
    err = capsys.readouterr().err
    assert "cannot load the TLS certificate" in err and "Traceback" not in err


def test_gateway_thread_stop_cuts_stalled_posts_off_after_the_grace_period(tmp_path: Path) -> None:
    gateway = GatewayThread(GatewaySettings(port=0, spool=tmp_path / "spool", drain_seconds=0.3)).start()
    assert gateway.server is not None
    assert post(gateway.url, "pv", b"a,1,{}")[0] == 200
    stalled = [socket.create_connection(("127.0.0.1", gateway.server.port), timeout=30) for _ in range(2)]
    for s in stalled:
        s.sendall(b"POST /v1/logs/pv HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nb,2,{}\n")
    wait_until(lambda: gateway.server is not None and gateway.server.gateway.in_flight == 2, "two stalled posts")
    gateway.stop(timeout=60)
    assert not gateway._thread.is_alive()  # stopped by the grace period, long before the join's deadline
    assert all(s.sealed for s in list_segments(tmp_path / "spool"))
    assert spooled(tmp_path / "spool") == [b"a,1,{}"]
    for s in stalled:
        s.close()
