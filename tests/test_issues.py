"""Error issues: grouping, episodes and notifications as pure functions; the same issues from a backfill
(FnApiRunner) and a stream (Prism, the spool read as a backlog) of the generated archive."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from connectors.files import latest_rows
from pipelines.backfill import run_backfill
from pipelines.components.issues import (
    IssueFolder,
    IssuesConfig,
    add_time,
    merge,
    merge_episodes,
    openings,
)
from pipelines.config import ConfigError, parse_config
from tests.conftest import PINNED
from tests.test_stream import gateway_port, post, start, wait_for
from transforms.category import category_from_path
from transforms.event import Event, EventBatch
from transforms.partials import fold_all
from transforms.sketches import Hll

HOUR = 3_600_000
JOB = {
    "routes": [{"name": "errors", "match": {"category": ["error", "mongoErr"]}}],
    "decorate": [{"match": {"category": "error"}, "ops": [{"normalize": {"keys": ["message"]}}]}],
    "issues": [{"name": "errors", "route": "errors", "fingerprint": ["category", "class", "message_fp"],
                "quiet_period": "6h", "cooldown": "1h"}],
}


def test_episodes_join_events_less_than_a_quiet_period_apart_in_any_order() -> None:
    times = [0, 1, 5 * HOUR, 12 * HOUR, 12 * HOUR + 3, 30 * HOUR]
    expected = [(0, 5 * HOUR), (12 * HOUR, 12 * HOUR + 3), (30 * HOUR, 30 * HOUR)]
    for seed in range(5):
        shuffled = random.Random(seed).sample(times, len(times))
        episodes: list[tuple[int, int]] = []
        for ts in shuffled:
            add_time(episodes, ts, 6 * HOUR)
        assert episodes == expected
        half = len(shuffled) // 2
        parts = [merge_episodes([(t, t) for t in part], 6 * HOUR) for part in (shuffled[:half], shuffled[half:])]
        assert merge_episodes([*parts[0], *parts[1]], 6 * HOUR) == expected


def test_a_new_issue_and_each_regression_are_notified_at_most_once_per_cooldown() -> None:
    episodes = [(0, 10), (2 * HOUR, 3 * HOUR), (2 * HOUR + 30 * 60_000, 2 * HOUR + 40 * 60_000), (9 * HOUR, 9 * HOUR)]
    assert openings(episodes, HOUR) == [0, 2 * HOUR, 9 * HOUR]  # the third is within an hour of the second
    assert openings(episodes, HOUR, after=2 * HOUR) == [9 * HOUR]  # already notified up to the second


def event(ts: int, area: str, cls: str, uid: int) -> Event:
    raw = b'%s,%d,{"class":"%s","uid":%d}' % (area.encode(), ts, cls.encode(), uid)
    return Event(area, ts, "error", {"class": cls, "uid": uid}, "logs/error.0.log", ts, raw, None, {})


def test_partials_of_any_split_merge_to_the_same_issue() -> None:
    conf = IssuesConfig(name="e", route="errors", fingerprint=["class"], samples=2, quiet_period=3600)
    events = [event(1_389_900_000_000 + i * 600_000, "us" if i % 3 else "de", "Quest", i % 7) for i in range(40)]
    def partials(part: list[Event]) -> dict:
        folder = IssueFolder(conf)
        return {k: v for k, v, _ in folder.emit(fold_all(folder, [EventBatch("s", "s", 0, part)]))}

    [(fp, acc)] = partials(events).items()
    shuffled = random.Random(1).sample(events, len(events))
    left, right = partials(shuffled[:13]), partials(shuffled[13:])
    merged = merge(left[fp], right[fp], Hll(conf.lg_k), conf.samples, 3_600_000)
    assert (merged.first, merged.last, merged.count, merged.areas, merged.samples, merged.episodes) == (
        acc.first, acc.last, acc.count, acc.areas, acc.samples, acc.episodes)
    assert acc.count == 40 and acc.areas == {"us", "de"} and len(acc.samples) == 2
    assert round(Hll(conf.lg_k).deserialize(merged.users).get_estimate()) == 7


def test_issue_names_are_unique_and_routes_exist() -> None:
    with pytest.raises(ConfigError, match="issue names must be unique"):
        parse_config({**JOB, "issues": JOB["issues"] * 2})
    with pytest.raises(ConfigError, match=r"issues\.errors\.route: no route named 'x'"):
        parse_config({**JOB, "issues": [{**JOB["issues"][0], "route": "x"}]})


def comparable(out: Path) -> dict[str, dict]:
    return {k: {f: v for f, v in row.items() if f != "users"} | {"users": round(row["users"])}
            for k, row in latest_rows(str(out / "issues")).items()}


@pytest.mark.integration
def test_bounded_and_unbounded_give_the_same_issues(sample, tmp_path: Path) -> None:
    logs, _ = sample
    posted = [p for p in sorted(logs.iterdir())
              if p.suffix != ".gz" and category_from_path(str(p)) in ("error", "mongoErr")]
    bounded = tmp_path / "bounded"
    summary = run_backfill([str(p) for p in posted], str(bounded), parse_config(JOB), PINNED)
    issues = comparable(bounded)
    assert summary["issues"] == len(issues) >= 5 and summary["issues_top"]
    assert all(row["count"] >= len(row["samples"]) and row["first_seen"] <= row["last_seen"]
               for row in issues.values())

    spool, gw_log = tmp_path / "spool", tmp_path / "gateway.log"
    gateway = start(["pipelines.gateway", "--spool", str(spool), "--port", "0"], gw_log)
    try:
        port = wait_for("gateway", lambda: gateway_port(gw_log), 30, gateway, gw_log)
        for path in posted:
            body = [line for line in path.read_bytes().split(b"\n") if line]  # the gateway skips empty lines
            for i in range(0, len(body), 500):
                assert post(port, category_from_path(str(path)), body[i:i + 500]) == 200
    finally:
        gateway.terminate()
        assert gateway.wait(60) == 0
    job_file, out, log = tmp_path / "job.yaml", tmp_path / "stream", tmp_path / "stream.log"
    job_file.write_text(yaml.safe_dump({**JOB, "stream": {"idle_timeout": "1h"}}))
    stream = start(["pipelines.stream", "--output", str(out), "--spool", str(spool), "--no_gateway",
                    "--config", str(job_file), "--idle_stop", "5"], log)
    try:
        assert stream.wait(600) == 0, log.read_text()[-3000:]
    finally:
        if stream.poll() is None:
            stream.kill()
            stream.wait()
    assert comparable(out) == issues
    assert "new_issue:errors" in log.read_text()
