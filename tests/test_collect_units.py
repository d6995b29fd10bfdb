"""The collector's parts without processes: line rules, fingerprints, batches and keys, retries, config errors."""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from connectors.collector.agent import Collector
from connectors.collector.batcher import Batch, Batcher
from connectors.collector.config import BatchConfig, CollectorConfig, GatewayTarget, RetryConfig, SourceConfig
from connectors.collector.config import load_collector_config as load
from connectors.collector.lines import LineRules, RawFormat, split_block
from connectors.collector.metrics import Metrics
from connectors.collector.shipper import Shipper, backoff, retry_after
from connectors.collector.tailer import TailedFile, fingerprint
from pipelines.validation import ConfigError


def rules(**source: Any) -> LineRules:
    return LineRules.of(SourceConfig(paths=["/x/*.log"], **source), "web-1", 20)


def test_passthrough_blocks_go_out_as_they_are() -> None:
    block = b"a,1,{}\n\nb,2,{}\r\n"
    (run,) = split_block(block, 100, rules())
    assert (run.start, run.end, run.body, run.lines) == (100, 100 + len(block), block, 2)
    assert (run.counts.read, run.counts.empty) == (3, 1)


def test_ignores_long_lines_and_ranges_that_tile_the_block() -> None:
    block = b"a,1,{}\nDEBUG x\n" + b"L" * 30 + b"\nb,2,{}\nc,3,trace\n"
    runs = split_block(block, 0, rules(ignore=["DEBUG", "re:trace$"]))
    assert [(r.start, r.end, r.dead, r.lines) for r in runs] == [(0, 15, False, 1), (15, 46, True, 1),
                                                                 (46, len(block), False, 1)]
    assert runs[0].body == b"a,1,{}\n" and runs[1].body == b"L" * 20 and runs[2].body == b"b,2,{}\n"
    assert (runs[0].counts.ignored, runs[2].counts.ignored, runs[1].counts.cut) == (1, 1, 1)


def test_raw_lines_become_als_with_the_parsed_time_or_now() -> None:
    raw = RawFormat(b"fr", "web-1", SourceConfig(paths=["x"], format="raw", area="fr", time={
        "pattern": r"^\[(.+?)\]", "format": "%d/%b/%Y:%H:%M:%S %z"}).time)  # type: ignore[arg-type]
    line, parsed = raw.wrap(b"[18/Jan/2014:15:05:00 +0100] GET /\r", 7)
    assert parsed and line == b'fr,1390053900000,{"host":"web-1","msg":"[18/Jan/2014:15:05:00 +0100] GET /"}'
    assert raw.wrap(b"no time \xff", 7) == (b'fr,7,{"host":"web-1","msg":"no time \xef\xbf\xbd"}', False)


def test_fingerprint_is_the_first_line_and_waits_for_one(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"first line witho")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert fingerprint(fd) is None  # no complete first line yet, and fewer than 256 bytes
        with path.open("ab") as f:
            f.write(b"ut end\nsecond\n")
        fp = fingerprint(fd)
        assert fp is not None and fp.length == len(b"first line without end\n") and fp.matches(fd)
        with path.open("ab") as f:
            f.write(b"more\n")
        assert fingerprint(fd) == fp  # appends do not change it
        path.write_bytes(b"other first line\n")  # same inode, new content
        assert not fp.matches(fd)
    finally:
        os.close(fd)


def test_partial_line_is_held_then_sent_after_the_timeout_and_truncation_starts_again(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"one\ntw")
    f = TailedFile(0, str(path), os.open(path, os.O_RDONLY), "a", 0, None)
    try:
        block = f.read(1000, 100, 100, now=0.0, partial_timeout=5)
        assert block is not None and (block.data, f.pos) == (b"one\n", 4)
        assert f.read(1000, 100, 100, now=1.0, partial_timeout=5) is None  # held
        block = f.read(1000, 100, 100, now=6.0, partial_timeout=5)
        assert block is not None and (block.data, block.end, block.partial) == (b"tw\n", 6, True)
        path.write_bytes(b"x\n")  # truncated and shorter than the position
        block = f.read(1000, 100, 100, now=7.0, partial_timeout=5)
        assert block is not None and (block.start, block.data, f.generation) == (0, b"x\n", 1)
    finally:
        f.close()


def make_batcher(shipped: list[Batch], **batch: Any) -> Batcher:
    return Batcher(BatchConfig(**batch), [LineRules(100)], "dead", "web-1", Metrics(["s"]), shipped.append)


def test_batches_are_acknowledged_in_file_order_and_keys_name_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "pv.0.log"
    path.write_bytes(b"a,1,{}\n" * 10)
    f = TailedFile(0, str(path), os.open(path, os.O_RDONLY), "pv", 0, None)
    shipped: list[Batch] = []
    batcher = make_batcher(shipped, lines=4)
    try:
        while (block := f.read(1000, batcher.room(f)[1], 100, 0.0, 5)) is not None:
            batcher.add(f, block, 0.0)
        batcher.seal_all()
        assert [(b.start, b.end, b.lines) for b in shipped] == [(0, 28, 4), (28, 56, 4), (56, 70, 2)]
        assert shipped[1].key == f"{f.id}:28-56" and re.fullmatch(r"[0-9a-f]+\.[0-9a-f]+\.7\.[0-9a-f]{8}", f.id)
        batcher.acknowledge(shipped[1])
        assert f.acked == 0  # the first batch is not acknowledged yet
        batcher.acknowledge(shipped[0])
        assert f.acked == 56 and batcher.buffered == 14
    finally:
        f.close()


def collector_on(tmp_path: Path) -> tuple[Path, CollectorConfig]:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "pv.0.log").write_bytes(b"a,1,{}\n" * 10)
    return logs, CollectorConfig(sources=[SourceConfig(name="s", paths=[str(logs / "*.log")])],
                                 gateways=GatewayTarget(urls=["http://127.0.0.1:1"]),
                                 checkpoints={"path": tmp_path / "cp.json"}, metrics=None)  # type: ignore[arg-type]


def test_an_inode_reused_by_another_file_does_not_inherit_its_position(tmp_path: Path) -> None:
    logs, config = collector_on(tmp_path)

    async def position() -> tuple[int, int]:
        collector = Collector(config)
        st = os.stat(logs / "pv.0.log")  # the checkpoint's file had this inode, and another first line
        collector._restored = {(st.st_dev, st.st_ino): {"dev": st.st_dev, "ino": st.st_ino, "length": 7,
                                                        "crc": 12345, "path": "x", "source": "s", "offset": 63,
                                                        "sent": []}}
        collector._first_start = False
        collector.discover(0.0)
        (f,) = collector.files.values()
        f.close()
        return f.pos, f.acked

    assert asyncio.run(position()) == (0, 0)


def test_a_restart_replays_the_sent_ranges_with_the_same_keys(tmp_path: Path) -> None:
    logs, config = collector_on(tmp_path)

    async def replayed() -> list[Batch]:
        collector = Collector(config)
        fd = os.open(logs / "pv.0.log", os.O_RDONLY)
        fp = fingerprint(fd)
        os.close(fd)
        assert fp is not None
        collector._restored = {(fp.dev, fp.ino): {"dev": fp.dev, "ino": fp.ino, "length": fp.length, "crc": fp.crc,
                                                  "path": "x", "source": "s", "offset": 7,
                                                  "sent": [[7, 21, False], [21, 35, True], [35, 42, False]]}}
        collector._first_start = False
        collector.discover(0.0)
        (f,) = collector.files.values()
        batches = [collector.queue.get_nowait() for _ in range(collector.queue.qsize())]
        assert (f.pos, f.acked) == (42, 7)
        for file in collector.files.values():
            file.close()
        return batches

    batches = asyncio.run(replayed())
    assert [(b.key.split(":")[1], b.lines, b.replayed) for b in batches] == [("7-21", 2, True), ("35-42", 1, True)]


def test_retry_after_and_backoff() -> None:
    assert retry_after("3", 1.0) == 3.0 and retry_after(None, 1.0) == 1.0 and retry_after("soon", 2.0) == 2.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= retry_after(date, 1.0) <= 31
    for failures in range(1, 12):
        delay = backoff(failures, 0.2, 30.0)
        assert min(30.0, 0.2 * 2 ** (failures - 1)) / 2 <= delay <= min(30.0, 0.2 * 2 ** (failures - 1))


def test_the_idempotency_key_is_sent_and_stays_the_same_across_retries(tmp_path: Path) -> None:
    """Against a recording HTTP server (a fake: today's gateway ignores the header, so only a recorder can show
    it): two 503s, then a 200."""
    seen: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append({"key": request.headers.get("Idempotency-Key", ""), "path": request.path,
                     "auth": request.headers.get("Authorization", ""), "body": (await request.read()).decode()})
        return web.json_response({"accepted": 1}, status=200 if len(seen) > 2 else 503)

    path = tmp_path / "pv.0.log"
    path.write_bytes(b"a,1,{}\n")

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/logs/{category}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        shipper = Shipper(GatewayTarget(urls=[f"http://127.0.0.1:{port}"], token="t" * 16),
                          RetryConfig(initial_backoff=0.01, max_backoff=0.02), Metrics(["s"]), 1)
        await shipper.start()
        f = TailedFile(0, str(path), os.open(path, os.O_RDONLY), "pv", 0, fingerprint(os.open(path, os.O_RDONLY)))
        batch = Batch(f, 0, f.id, "pv", 0, 7, 0.0, [b"a,1,{}\n"], 1, 7)
        await shipper.send(batch, batch.body())
        f.close()
        await shipper.close()
        await runner.cleanup()
        assert shipper.metrics.values["responses_total", (("code", "503"),)] == 2

    asyncio.run(main())
    assert len(seen) == 3 and len({s["key"] for s in seen}) == 1 and seen[0]["key"].endswith(":0-7")
    assert seen[0]["path"] == "/v1/logs/pv" and seen[0]["auth"] == "Bearer " + "t" * 16
    assert seen[0]["body"] == "a,1,{}\n"


@pytest.mark.parametrize(("text", "message"), [
    ("sources: []\ngateways: {urls: [http://a:1]}\ncheckpoints: {path: x}\n",
     "sources: List should have at least 1 item"),
    ("sources: [{paths: x, format: raw}]\ngateways: {urls: [http://a:1]}\ncheckpoints: {path: x}\n",
     "sources.0: format raw needs an area"),
    ("sources: [{paths: x, category: 9x}]\ngateways: {urls: [http://a:1/v1]}\ncheckpoints: {path: x}\n",
     "sources.0.category: expected auto (from the file name) or a category"),
    ("sources: [{paths: x}]\ngateways: {urls: [http://a:1], tokn: y}\ncheckpoints: {path: x}\n",
     "gateways.tokn: unknown key; expected one of: urls, token, token_file, ca_file"),
    ("sources: [{paths: x}]\ngateways: {urls: [http://a:1], token: short}\ncheckpoints: {path: x}\n",
     "gateways.token: String should have at least 16 characters"),
    ("sources: [{paths: x}]\ngateways: {urls: [http://a:1]}\ncheckpoints: {path: x}\nbatch: {linger: soon}\n",
     "batch.linger: expected a duration such as 90s"),
    ("sources: [{paths: x, format: raw, area: a, time: {pattern: '\\d+', format: '%s'}}]\n"
     "gateways: {urls: [http://a:1]}\ncheckpoints: {path: x}\n",
     "sources.0.time.pattern: the pattern needs a group around the time"),
    ("sources: [{paths: x}]\ngateways: {urls: [http://a:1]}\n", "checkpoints: Field required"),
    ("sources: [{paths: x}, {paths: x}]\ngateways: {urls: [http://a:1]}\ncheckpoints: {path: x}\n",
     "sources: two sources have the same name"),
    ("sources: [{paths: x}]\ngateways: {urls: [http://a:1]}\ncheckpoints: {path: x}\nbatch: {bytes: 1KiB}\n",
     "tail: max_line_bytes (262144) must be below batch.bytes (1024)"),
    ("sources: [{paths: x}\n", ":2:1: invalid YAML"),
])
def test_config_mistakes_name_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "collector.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value).startswith(f"{path}") and message in str(err.value), str(err.value)
    assert "short" not in str(err.value)  # a token is never echoed


def test_the_template_is_valid() -> None:
    config = load(Path(__file__).resolve().parent.parent / "templates" / "collector" / "collector.yaml")
    assert config.sources and orjson.dumps(config.model_dump(mode="json"))
