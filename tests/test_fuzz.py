"""Bounded property-based fuzzing: random lines, requests, job configs and spool folders always get a clear
answer (an event or a dead letter, a 2xx/4xx/5xx with a reason, a ConfigError, a recovered spool) and every
line is accounted for. `python -m bench.fuzz` runs the same properties much longer (DPIPE_FUZZ_EXAMPLES)."""

from __future__ import annotations

import asyncio
import gzip
import os
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.collector.checkpoint import load_checkpoint
from connectors.collector.config import CollectorConfig, SourceConfig, load_collector_config
from connectors.collector.lines import LineRules, split_block
from connectors.gateway.api import Gateway
from connectors.gateway.settings import GatewaySettings
from connectors.gateway.spool import SpoolWriter, list_segments, read_lines, spool_lines
from pipelines.config import ConfigError, JobConfig, parse_config
from transforms.als import parse_batch, parse_line
from transforms.event import DeadLetter, Event, LineBatch

EXAMPLES = int(os.environ.get("DPIPE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
TOKEN = "fuzz-token-0123456789abcdef"

# ---- the parser ----

als_like = st.builds(
    lambda area, ts, payload: b"%s,%s,%s" % (area, ts, payload),
    st.one_of(st.binary(max_size=8), st.sampled_from([b"us", b"fr", b"", b"\x00", b"\xff"])),
    st.one_of(st.binary(max_size=14), st.integers(-10, 10**20).map(lambda n: str(n).encode())),
    st.one_of(st.binary(max_size=40), st.sampled_from([b"{}", b'{"a":1}', b"[1]", b'{"a":', b""])),
)


@FUZZ
@given(lines=st.lists(st.one_of(st.binary(max_size=60), als_like), max_size=30),
       category=st.one_of(st.none(), st.sampled_from(["pv", "mongoErr"])))
def test_parse_batch_gives_every_line_exactly_one_outcome(lines: list[bytes], category: str | None) -> None:
    batch = LineBatch("s/pv.0.log", "shard", 0, category, list(range(len(lines))), lines,
                      None if category else "no category")
    events, dead = parse_batch(batch)
    assert sorted([e.offset for e in events.events] + [d.offset for d in dead]) == list(range(len(lines)))
    assert all(d.error and d.raw is not None and d.source == "s/pv.0.log" for d in dead)
    for line in lines:
        assert isinstance(parse_line(line, "s", 0, "pv"), Event | DeadLetter)


# ---- the gateway's request handling (the real Gateway over a real SpoolWriter) ----


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def gateway(loop: asyncio.AbstractEventLoop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    spool = tmp_path_factory.mktemp("fuzz-spool")

    async def make() -> SpoolWriter:
        return SpoolWriter(spool, fsync=False, max_spool_bytes=1 << 40)

    writer = loop.run_until_complete(make())
    settings = GatewaySettings(spool=spool, max_body_bytes=4096, max_line_bytes=512, max_lines=50, fsync=False,
                               tokens=[{"project": "p", "token": TOKEN, "categories": ["pv", "mongo_*"]}])
    yield Gateway(settings, writer)
    loop.run_until_complete(writer.close())


header_values = st.one_of(st.text(max_size=30), st.sampled_from(["gzip", "x-gzip", "br", "identity", " GZIP "]))
headers = st.fixed_dictionaries({}, optional={
    "content-encoding": header_values,
    "content-length": st.one_of(st.integers(-1, 10_000).map(str), st.text(max_size=5)),
    "authorization": st.one_of(st.just(f"Bearer {TOKEN}"), st.text(max_size=40), st.just("Bearer ")),
    "idempotency-key": st.text(max_size=210),
})
categories = st.one_of(st.text(max_size=120), st.sampled_from(["pv", "mongo_err", "mongoErr", "c" * 101, "../x"]),
                       st.text(string.ascii_letters + "_", min_size=1, max_size=110))


@FUZZ
@given(method=st.sampled_from(["POST", "GET", "PUT", "HEAD"]), category=categories, headers=headers,
       body=st.binary(max_size=6000), compress=st.booleans())
def test_any_request_gets_a_clear_answer_and_a_200_spools_exactly_its_lines(
        gateway: Gateway, loop: asyncio.AbstractEventLoop, method: str, category: str, headers: dict[str, str],
        body: bytes, compress: bool) -> None:
    if compress:
        body = gzip.compress(body)
    spool = gateway.settings.spool
    assert spool is not None
    before = len(spool_lines(spool))

    async def read(limit: int) -> bytes | None:
        return body if len(body) <= limit else None

    response = loop.run_until_complete(gateway.handle(method, f"/v1/logs/{category}", headers, read))
    assert response.status in {200, 400, 401, 403, 405, 409, 413, 415, 429, 503, 507}, response
    answer = response.body.decode()
    assert ('"accepted"' in answer) == (response.status == 200) and ('"error"' in answer) != (response.status == 200)
    accepted = int(answer.split(":")[1].split(",")[0].rstrip("}")) if response.status == 200 else 0
    duplicate = "duplicate" in answer
    assert len(spool_lines(spool)) == before + (0 if duplicate else accepted)


# ---- the job-config loader ----

KEYS = [*JobConfig.model_fields, "parse", "read", "max_age", "chunk_bytes", "match", "ops", "routes", "name",
        "category", "where", "window", "gateway", "tokens", "decorate", "geoip", "range", "keys", "bounds"]
leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=12),
                   st.sampled_from(["7d", "90s", "16MiB", "soon", "-1", "*", "mongo*"]))
trees = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), inner, max_size=5)), max_leaves=25)


@FUZZ
@given(tree=st.one_of(trees, st.dictionaries(st.sampled_from(KEYS), trees, max_size=5)))
def test_any_yaml_tree_is_a_job_config_or_a_clear_config_error(tree: Any) -> None:
    text = yaml.safe_dump(tree)  # what a user could write
    try:
        job = parse_config(yaml.safe_load(text), "job.yaml")
    except ConfigError as err:
        message = str(err)
        assert message.startswith("job.yaml") and "Traceback" not in message
    else:
        assert isinstance(job, JobConfig)


# ---- the spool reader and recovery on corrupt, truncated and foreign files ----

names = st.one_of(
    st.builds(lambda seq, cat, suffix: f"{seq:016d}.{cat}{suffix}", st.integers(0, 10**6),
              st.sampled_from(["pv", "mongoErr", "x_y"]), st.sampled_from([".open", ".seg"])),
    st.sampled_from(["next_seq", "keys", "junk.txt", "12.pv.seg", "0000000000000001.pv.seg.tmp"]),
    st.text(string.ascii_letters + string.digits + "._", min_size=1, max_size=30).filter(lambda n: n not in ".."))


@FUZZ
@given(files=st.dictionaries(names, st.binary(max_size=300), max_size=6))
def test_corrupt_or_foreign_spool_files_are_read_or_recovered_never_a_crash(tmp_path_factory: pytest.TempPathFactory,
                                                                         files: dict[str, bytes]) -> None:
    root = tmp_path_factory.mktemp("spool")
    segments = root / "segments"
    segments.mkdir()
    for name, data in files.items():
        (segments / name).write_bytes(data)
    for segment in list_segments(root):
        lines, end = read_lines(segment.path, 0, 64)
        assert all(not line.endswith(b"\n") for _, line in lines) and end <= segment.path.stat().st_size
    twins = {s.seq for s in list_segments(root) if not s.sealed} & {s.seq for s in list_segments(root) if s.sealed}
    # a sealed segment stays as it is; an open one keeps its complete lines, only a partial tail is cut
    complete = {s.seq: (data if s.sealed else data[: data.rfind(b"\n") + 1])
                for s in list_segments(root) for data in [s.path.read_bytes()]}

    async def recover_and_write() -> None:
        writer = SpoolWriter(root, fsync=False)
        await writer.append("pv", [b"after,1,{}"])
        await writer.close()

    asyncio.run(recover_and_write())
    segs = list_segments(root)
    assert all(s.sealed for s in segs)
    for seq, data in complete.items():
        path = next(s.path for s in segs if s.seq == seq)
        assert path.read_bytes() == data or seq in twins
    assert spool_lines(root)[-1][2] == b"after,1,{}"
    assert max(s.seq for s in segs) == max(s.seq for s in segs if Path(s.path).read_bytes() == b"after,1,{}\n")


# ---- the collector: its config, its checkpoint file and what it does to the lines it reads ----

COLLECTOR_KEYS = [*CollectorConfig.model_fields, "paths", "urls", "path", "lines", "bytes", "linger", "format",
                  "area", "time", "pattern", "timezone", "ignore", "category", "read_from", "token", "port"]
collector_trees = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(COLLECTOR_KEYS), st.text(max_size=8)), inner, max_size=5)),
    max_leaves=25)


@FUZZ
@given(tree=st.one_of(collector_trees, st.dictionaries(st.sampled_from(COLLECTOR_KEYS), collector_trees,
                                                       max_size=6)))
def test_any_yaml_tree_is_a_collector_config_or_a_clear_config_error(tmp_path_factory: pytest.TempPathFactory,
                                                                     tree: Any) -> None:
    path = tmp_path_factory.mktemp("collector") / "collector.yaml"
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    try:
        config = load_collector_config(path)
    except ConfigError as err:
        assert str(err).startswith(str(path)) and "Traceback" not in str(err)
    else:
        assert isinstance(config, CollectorConfig)


SAVED = {"id": "801.1a2b.2f.9c0ffee0", "dev": 2049, "ino": 6699, "length": 47, "crc": 2617245408,
         "path": "/var/log/app/pv.0.log", "source": "app", "offset": 10, "sent": [[10, 20, False]]}
json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.text(max_size=8)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=12)


@FUZZ
@given(content=st.one_of(st.binary(max_size=80), json_values.map(orjson.dumps),
                         st.dictionaries(st.sampled_from(["version", "files"]), json_values).map(orjson.dumps),
                         st.lists(json_values, max_size=3).map(lambda f: orjson.dumps({"version": 1, "files": f})),
                         st.builds(lambda key, value: orjson.dumps({"version": 1, "files": [{**SAVED, key: value}]}),
                                   st.sampled_from([*SAVED, "extra"]), json_values)))
def test_a_corrupt_collector_checkpoint_is_a_clear_config_error(tmp_path_factory: pytest.TempPathFactory,
                                                                content: bytes) -> None:
    path = tmp_path_factory.mktemp("checkpoint") / "checkpoint.json"
    path.write_bytes(content)
    try:
        files = load_checkpoint(path)
    except ConfigError as err:
        assert str(err).startswith(str(path))
    else:
        assert isinstance(files, list) and all(isinstance(f["sent"], list) and f["offset"] >= 0 for f in files)


line_bytes = st.one_of(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
                       st.sampled_from([b"", b"\r", b"# comment", b"us,1400000000,{}", b"x" * 70]))


@FUZZ
@given(lines=st.lists(line_bytes, max_size=25), start=st.integers(0, 10**9),
       raw=st.booleans(), ignore=st.lists(st.sampled_from(["#", "re:^x+$", "us,"]), max_size=2),
       limit=st.integers(1, 64))
def test_split_block_tiles_the_block_and_accounts_for_every_line(lines: list[bytes], start: int, raw: bool,
                                                                 ignore: list[str], limit: int) -> None:
    block = b"".join(line + b"\n" for line in lines)
    source = SourceConfig(paths=["/x"], ignore=ignore, format="raw" if raw else "als", area="us" if raw else None)
    runs = split_block(block, start, LineRules.of(source, "host", limit), now_ms=1_400_000_000_000)
    # the runs tile the block: every byte is in exactly one run
    assert [r.start for r in runs] == [start, *[r.end for r in runs[:-1]]] if runs else block == b""
    assert (runs[-1].end if runs else start) == start + len(block)
    # every line is sent, cut to a dead letter, or counted as empty or ignored
    read = sum(r.counts.read for r in runs)
    assert read == len(lines)
    assert sum(r.lines for r in runs) + sum(r.counts.empty + r.counts.ignored for r in runs if not r.dead) == read
    assert sum(r.dead for r in runs) == sum(len(line) > limit for line in lines)
    for run in runs:
        if not run.dead and raw:
            assert all(isinstance(parse_line(line, "c", 0, "app"), Event)
                       for line in run.body.split(b"\n")[:-1])
