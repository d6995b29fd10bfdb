"""Alarms: window arithmetic, threshold edges, abnormal change, once per window, cooldown, selection; the
demo incident end to end; notifiers against a real SMTP server (aiosmtpd) and a real local HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import apache_beam as beam
import orjson
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream

from connectors.notify import (
    ConsoleSettings,
    EmailSettings,
    Notifiers,
    Notify,
    WebhookSettings,
    _NotifyDoFn,
    mail_pool,
    quiet,
)
from pipelines.backfill import run_backfill
from pipelines.config import load_config
from tests.conftest import runner_options
from transforms.alarms import EMPTY, Acc, RuleSpec, _Selector, add, evaluate, value_of, window_starts
from transforms.event import Event
from transforms.route import Condition, Matcher

ROOT = Path(__file__).resolve().parent.parent
MIN = 60_000


def acc_of(n: int) -> Acc:
    return Acc(n, 0.0, 0, frozenset(), ())


def test_sliding_windows_hold_each_event_size_over_period_times() -> None:
    assert list(window_starts(10 * MIN + 5, 5 * MIN, MIN)) == [6 * MIN, 7 * MIN, 8 * MIN, 9 * MIN, 10 * MIN]
    assert list(window_starts(10 * MIN, 10 * MIN, 10 * MIN)) == [10 * MIN]


@pytest.mark.parametrize(("op", "value", "fires"), [
    (">=", 100, True), (">=", 99, False), (">", 100, False), (">", 101, True), ("<=", 100, True), ("<", 100, False),
])
def test_threshold_edges(op: str, value: int, fires: bool) -> None:
    rule = RuleSpec("r", 60, 60, op=op, threshold=100)
    assert bool(list(evaluate(rule, (), [(0, acc_of(value))]))) is fires


def test_one_alarm_per_window_then_a_cooldown_per_key() -> None:
    rule = RuleSpec("spike", 300, 60, threshold=10, cooldown_s=1800, group_by=("area",))
    windows = [(m * MIN, acc_of(50)) for m in range(0, 5)]  # one spike seen by 5 overlapping windows
    windows += [(m * MIN, acc_of(50)) for m in range(20, 22)]  # within the cooldown: silent
    windows += [(m * MIN, acc_of(50)) for m in range(40, 41)]  # after it: a new alarm
    alarms = list(evaluate(rule, ("fr",), windows))
    assert [a["window"]["start"] for a in alarms] == ["1970-01-01T00:00:00Z", "1970-01-01T00:40:00Z"]
    assert alarms[0]["value"] == 50 and alarms[0]["threshold"] == 10 and alarms[0]["severity"] == 3


@pytest.mark.parametrize(("previous", "current", "fires"), [
    (10, 40, True),  # +300%
    (10, 39, False),
    (0, 500, False),  # no base: a first window is not a change
    (4, 100, False),  # below the minimum base
])
def test_abnormal_change_against_the_previous_window(previous: int, current: int, fires: bool) -> None:
    rule = RuleSpec("surge", 600, 600, change_percent=300, min_base=5)
    alarms = list(evaluate(rule, (), [(0, acc_of(previous)), (10 * MIN, acc_of(current))]))
    assert bool(alarms) is fires
    if fires:
        assert alarms[0]["previous"] == previous and alarms[0]["value"] == current


def ev(message: Any, area: str = "fr", **fields: Any) -> Event:
    return Event(area, 0, "error", {"message": message, **fields}, "f", 0, b"raw", b"{}", {"_fp": "x"})


def test_selection_ignores_conditions_and_aggregates() -> None:
    rule = RuleSpec("r", 60, 60, aggregate="distinct", field="uid", group_by=("area", "_fp"),
                    where=Matcher(where=(Condition("class", "==", "DbService"),)), ignore=("^payment error",),
                    threshold=1)
    selector = _Selector(rule)
    assert selector.select(ev("mysql gone", uid=1, **{"class": "DbService"})) == (("fr", "x"), 1)
    assert selector.select(ev("payment error: OK", uid=1, **{"class": "DbService"})) is None
    assert selector.select(ev("mysql gone", uid=1, **{"class": "Other"})) is None
    acc = EMPTY
    for uid in (1, "1", 2, None):
        acc = add(acc, uid, "sample", rule)
    assert value_of(acc, rule) == 2 and acc[0] == 4 and len(acc[4]) == 3
    mean = RuleSpec("m", 60, 60, aggregate="mean", field="t", threshold=1)
    acc = add(add(add(EMPTY, 1.0, None, mean), 3.0, None, mean), "x", None, mean)
    assert value_of(acc, mean) == 2.0 and value_of(acc, RuleSpec("s", 60, 60, aggregate="sum", threshold=1)) == 4.0


def test_the_demo_incident_raises_its_alarms_and_quiet_areas_none(sample, tmp_path: Path) -> None:
    logs, manifest = sample
    job = load_config(ROOT / "templates" / "jobs" / "engine.als.yaml")
    summary = run_backfill([str(logs / "*")], str(tmp_path), job, ["--runner", "FnApiRunner"])
    alarms = [orjson.loads(line) for f in (tmp_path / "alarms").glob("*.jsonl") for line in f.open("rb")]
    incident = manifest["incident"]
    assert summary["alarms"] == len(alarms) >= 1
    assert "error_spike" in {a["rule"] for a in alarms}
    assert all(a["key"]["area"] == incident["area"] for a in alarms)  # quiet areas raise none
    spike = next(a for a in alarms if a["rule"] == "error_spike")
    assert spike["window"]["start"] <= incident["start"].replace("+00:00", "Z") < spike["window"]["end"]
    assert spike["value"] == incident["lines"] and "mysql gone away" in spike["samples"][0]


ALARM = {"rule": "error_spike", "key": {"area": "fr"}, "window": {"start": "a", "end": "b"}, "aggregate": "count",
         "value": 400, "op": ">=", "threshold": 100.0, "severity": 4, "samples": ["fr,1,{}"]}


def test_console_rings_the_bell_at_the_beep_severity(capsys: pytest.CaptureFixture) -> None:
    fn = _NotifyDoFn(Notifiers(console=ConsoleSettings(beep_severity=4, colour=False)))
    fn.setup()
    list(fn.process(ALARM))
    list(fn.process({**ALARM, "severity": 2}))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "\aALARM sev4 error_spike [area=fr] a..b: count = 400 (>= 100)"
    assert not out[1].startswith("\a")


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []
    failures_left = 1

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if _Hook.failures_left:
            _Hook.failures_left -= 1
            self.send_response(503)
        else:
            _Hook.received.append(json.loads(body))
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhook_posts_json_and_retries_a_5xx() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/hook"
        fn = _NotifyDoFn(Notifiers(webhook=WebhookSettings(url, max_retries=3)))
        fn.setup()
        assert list(fn.process(ALARM)) == [ALARM]
        assert _Hook.received == [ALARM] and _Hook.failures_left == 0
    finally:
        server.shutdown()


@pytest.fixture
def smtp_server():
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    class Inbox(Message):
        def __init__(self) -> None:
            super().__init__()
            self.mails: list = []

        def handle_message(self, message: Any) -> None:
            self.mails.append(message)

    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, inbox
    controller.stop()


def mail(email: EmailSettings, alarms: list[dict], stream: TestStream | None = None,
         clock: Callable[[], float] = lambda: 1_000_000.0, options: PipelineOptions | None = None) -> Any:
    """Run Notify over `alarms` (bounded, on the FnApiRunner or the given `options`) or `stream` (a TestStream,
    on the streaming DirectRunner); returns the finished pipeline's result: every mail is in the SMTP server's
    inbox by then. The wall `clock` stands still (only the runner's processing time moves, under TestStream),
    so a mail the minimum interval held back can only go out through one of Notify's timers."""
    if stream is None:
        pipeline = beam.Pipeline(options=options or runner_options())
        source = pipeline | beam.Create(alarms)
    else:
        options = runner_options(streaming=True)
        options.view_as(StandardOptions).runner = "BundleBasedDirectRunner"
        pipeline = beam.Pipeline(options=options)
        source = pipeline | stream
    _ = source | Notify(Notifiers(email=email, clock=clock))
    result = pipeline.run()
    result.wait_until_finish()
    return result


def alarms_in(message: Any) -> list[str]:
    return [line.split()[2] for line in message.get_payload().splitlines() if line.startswith("ALARM")]


@pytest.mark.parametrize("runner", ["FnApiRunner", "Prism"])
def test_mail_held_by_the_minimum_interval_goes_out_before_the_run_ends(smtp_server, runner: str,
                                                                       request: pytest.FixtureRequest) -> None:
    """The backfill's runner, and Prism in streaming mode (the stream's), whose input here ends: a drain."""
    port, inbox = smtp_server
    options = None
    if runner == "Prism":
        options = PipelineOptions([*request.getfixturevalue("prism").options(), "--streaming"])
    email = EmailSettings("127.0.0.1", port, to=("oncall@example.com",), min_interval_s=300)
    alarms = [{**ALARM, "rule": f"r{i}", "severity": sev} for i, sev in enumerate((5, 4, 2, 5))]
    result = mail(email, [*alarms, {**ALARM, "rule": "revised", "revision": 1}],  # a revision is not mailed
                  options=options)
    by_pool: dict[str, list[list[str]]] = {}
    for message in inbox.mails:
        assert message["To"] == "oncall@example.com"
        by_pool.setdefault("4-5" if "severity up to 2" not in message["Subject"] else "1-3", []).append(
            alarms_in(message))
    # pool [4, 5]: its first alarm at once, the two the interval held back in one mail when the input ended
    assert sorted(map(len, by_pool["4-5"])) == [1, 2]
    assert sorted(a for m in by_pool["4-5"] for a in m) == ["r0", "r1", "r3"]
    assert by_pool["1-3"] == [["r2"]]
    sent = result.metrics().query(MetricsFilter().with_name("mails_sent"))["counters"]
    assert sum(c.committed for c in sent) == 3


def test_in_a_stream_held_mail_goes_out_once_the_interval_has_passed(smtp_server) -> None:
    port, inbox = smtp_server
    email = EmailSettings("127.0.0.1", port, to=("a@b.c",), pools=((1, 5),), min_interval_s=300)
    stream = TestStream().add_elements([{**ALARM, "rule": "first"}, {**ALARM, "rule": "held"}])
    stream.advance_processing_time(301)  # the processing-time timer of the held mail fires
    stream.add_elements([{**ALARM, "rule": "after"}]).advance_watermark_to_infinity()
    mail(email, [], stream, clock=lambda: 0.0)  # TestStream's processing time starts at 0 as well
    # had the held mail waited for the end, "held" and "after" would share one mail
    assert [alarms_in(m) for m in inbox.mails] == [["first"], ["held"], ["after"]]


def test_quiet_hours_hold_back_all_but_urgent_alarms(smtp_server) -> None:
    port, inbox = smtp_server
    three_am = 1389927600.0  # 2014-01-17 03:00 UTC
    email = EmailSettings("127.0.0.1", port, to=("a@b.c",), quiet_hours=(22, 7), urgent_severity=5)
    assert quiet(email, three_am) and not quiet(email, three_am + 5 * 3600)
    assert not quiet(EmailSettings("h", quiet_hours=(9, 17)), three_am)
    assert mail_pool(email, 4) == "4-5" and mail_pool(EmailSettings("h", pools=((4, 5),)), 2) is None
    result = mail(email, [{**ALARM, "severity": 4}, {**ALARM, "severity": 5}], clock=lambda: three_am)
    assert [m["Subject"].split(":")[0] for m in inbox.mails] == ["[dpipe] 1 alarm(s), severity up to 5"]
    skipped = result.metrics().query(MetricsFilter().with_name("mail_quiet_skipped"))["counters"]
    assert sum(c.committed for c in skipped) == 1
