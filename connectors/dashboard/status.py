"""The admin API's numbers: a running stream's `/status`, its health, and the same as Prometheus metrics.

Built from what a running stream has: the PipelineResult (job state, and Beam metrics where the runner reports
them while the job runs: Prism does not, the DirectRunner does), the in-process gateway's counters and spool,
and the outputs on disk (lines in the archive and the dead letters). Every Beam counter and gauge becomes a
Prometheus metric named from its namespace and name, so new ones appear without code changes.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

Status = dict[str, Any]
StatusFn = Callable[[], Status]
FINISHED_BAD = ("FAILED", "CANCELLED")
DEFAULT_MAX_LAG_S = 300.0
WATERMARK_GAUGE = "dpipe.input_watermark_ms"
GATEWAY_NAMES = {"dpipe_gateway_lines_total": "lines", "dpipe_gateway_bytes_total": "bytes",
                 "dpipe_gateway_up": "up", "dpipe_sink_spool_bytes": "spool_bytes"}
RATE_WINDOW_S = 10.0


def beam_metrics(result: Any) -> tuple[dict[str, float], dict[str, float]]:
    """(counters, gauges) of the `dpipe.*` namespaces as {"namespace/name": value}, summed over steps."""
    counters: dict[str, float] = {}
    gauges: dict[str, float] = {}
    if hasattr(result, "_metrics"):
        result._metrics = None  # the portable runner keeps its first answer forever: ask the job service again
    try:
        found = result.metrics().query()
    except Exception:  # a runner that cannot answer while the job runs, or a job server gone away
        return counters, gauges
    for kind, into in (("counters", counters), ("gauges", gauges)):
        for m in found.get(kind, []):
            if not m.key.metric.namespace.startswith("dpipe"):
                continue
            value = m.committed if m.committed is not None else m.attempted
            value = getattr(value, "value", value)  # a gauge's GaugeResult
            if value is None:
                continue
            name = f"{m.key.metric.namespace}/{m.key.metric.name}"
            into[name] = into.get(name, 0) + value if kind == "counters" else max(into.get(name, value), value)
    return counters, gauges


class Rate:
    """Per-second rate of a growing total over the last few seconds of samples."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self._window = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def update(self, total: float, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window:
            self._samples.popleft()
        (t0, v0), (t1, v1) = self._samples[0], self._samples[-1]
        return (v1 - v0) / (t1 - t0) if t1 > t0 else None


def _unread(spec: dict[str, Any]) -> int | None:
    """A local spool's bytes no reader has read yet (None for other inputs)."""
    path = spec.get("path")
    if spec.get("name") != "spool" or not path or not Path(path).is_dir():
        return None
    from connectors.spool_source import unread_bytes  # imports Beam: only a stream asks

    return unread_bytes(path)


class StreamStatus:
    """`/status` of a running stream: call it for a fresh dict (cheap; the outputs' counts are cached)."""

    def __init__(self, runner: str, output: str, inputs: list[dict[str, Any]] | None = None,
                 gateway_url: str | None = None, max_lag_s: float = DEFAULT_MAX_LAG_S) -> None:
        self.result: Any = None  # the PipelineResult, once the job is submitted
        self._runner, self._output = runner, output
        self._inputs = inputs or []
        self._gateway_url = gateway_url  # the stream's gateway (its own process), read through its /metrics
        self._max_lag_s = max_lag_s
        self._started = time.time()
        self._in, self._out = Rate(), Rate()

    def __call__(self) -> Status:
        from connectors.dashboard.data import outputs_counts

        state = "STARTING" if self.result is None else str(self.result.state).rsplit(".", 1)[-1]
        counters, gauges = beam_metrics(self.result) if self.result is not None else ({}, {})
        sinks, dead_letters = outputs_counts(self._output)
        lines_out = sinks.get("events", 0) + sinks.get("deadletter", 0)
        gateway = self._gateway_numbers()
        now = time.time()
        # the source's lag is its freshest input's: an idle category holds no watermark back, nor fails health
        marks = watermarks(gauges)
        inputs = [{**spec, "kind": "source", **_lag(max(marks.values(), default=None), now),
                   "backlog_bytes": gateway.get("spool_bytes"), "unread_bytes": _unread(spec)}
                  for spec in self._inputs]
        inputs += [{"name": name, "kind": "category", **_lag(ms, now)} for name, ms in sorted(marks.items())]
        late = {k: v for k, v in counters.items() if "late" in k}
        status: Status = {
            "runner": self._runner, "state": state, "started_ms": int(self._started * 1000),
            "uptime_s": now - self._started, "output": self._output, "inputs": inputs,
            "lines_in": gateway.get("lines"), "lines_in_per_s": None, "lines_out": lines_out,
            "lines_out_per_s": self._out.update(lines_out), "sinks": sinks, "dead_letters": dead_letters,
            "late_lines": late, "beam_counters": counters, "beam_gauges": gauges, "gateway": gateway,
        }
        if gateway.get("lines") is not None:
            status["lines_in_per_s"] = self._in.update(gateway["lines"])
        status["problems"] = problems(status, self._max_lag_s)
        status["healthy"] = not status["problems"]
        return status

    def _gateway_numbers(self) -> dict[str, Any]:
        """The gateway's own /metrics: lines and bytes accepted, requests by code, spool bytes, writer up."""
        if self._gateway_url is None:
            return {}
        try:
            with urllib.request.urlopen(f"{self._gateway_url}/metrics", timeout=2) as answer:
                text = answer.read().decode()
        except OSError as err:
            return {"url": self._gateway_url, "error": str(err)}
        found: dict[str, Any] = {"url": self._gateway_url, "requests": {}}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "dpipe_gateway_requests_total":
                    found["requests"][sample.labels.get("code", "")] = sample.value
                else:
                    found[GATEWAY_NAMES.get(sample.name, sample.name)] = sample.value
        found["sink_healthy"] = bool(found.get("up", 1))
        return found


def watermarks(gauges: dict[str, float]) -> dict[str, float]:
    """Each input's watermark (epoch ms) from the gauges `dpipe.input_watermark_ms/<input>`."""
    return {key.split("/", 1)[1]: v for key, v in gauges.items() if key.startswith(WATERMARK_GAUGE + "/")}


def _lag(watermark_ms: float | None, now: float) -> dict[str, Any]:
    return {"watermark_ms": watermark_ms,
            "watermark_lag_s": None if watermark_ms is None else max(0.0, now - watermark_ms / 1000)}


def problems(status: Status, max_lag_s: float) -> list[str]:
    """Why /healthz fails: the job failed or stopped, the gateway's writer died, or a watermark lags."""
    found = []
    if status.get("state") in FINISHED_BAD:
        found.append(f"pipeline {status['state'].lower()}")
    if status.get("gateway", {}).get("sink_healthy") is False:
        found.append("the gateway's spool writer died")
    for i in status.get("inputs", []):
        lag = i.get("watermark_lag_s") if i.get("kind") != "category" else None
        if lag is not None and lag > max_lag_s:
            found.append(f"{i.get('name', 'input')} watermark lags {lag:,.0f} s (more than {max_lag_s:,.0f} s)")
    return found


def metric_name(*parts: str) -> str:
    """A Prometheus name from Beam's namespace and name: 'dpipe.late', 'alarms' -> 'dpipe_late_alarms'."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", "_".join(parts)).strip("_")


class StatusCollector(Collector):
    """Prometheus metrics from a status dict, collected fresh at every scrape."""

    def __init__(self, status: StatusFn) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        s = self._status()
        yield _gauge("dpipe_up", "1 while /healthz answers 200.", int(bool(s.get("healthy", True))))
        state = GaugeMetricFamily("dpipe_job_state", "1 for the job's current state.", labels=["state", "runner"])
        state.add_metric([s.get("state") or "UNKNOWN", s.get("runner") or ""], 1)
        yield state
        yield _gauge("dpipe_uptime_seconds", "Seconds since the stream started.", s.get("uptime_s"))
        yield _counter("dpipe_lines_in", "Lines the gateway accepted.", s.get("lines_in"))
        yield _counter("dpipe_lines_out", "Lines in the archive and the dead letters.", s.get("lines_out"))
        rows = CounterMetricFamily("dpipe_sink_rows", "Rows each sink published.", labels=["sink"])
        for sink, n in sorted(s.get("sinks", {}).items()):
            rows.add_metric([sink], n)
        yield rows
        dead = CounterMetricFamily("dpipe_dead_letters", "Dead letters by reason.", labels=["reason"])
        for reason, n in sorted(s.get("dead_letters", {}).items()):
            dead.add_metric([reason], n)
        yield dead
        lag = GaugeMetricFamily("dpipe_watermark_lag_seconds", "Wall clock minus the input's watermark.",
                                labels=["input"])
        backlog = GaugeMetricFamily("dpipe_spool_backlog_bytes", "Bytes in the spool not yet released (read "
                                    "segments kept for a replay after a crash included).", labels=["input"])
        unread = GaugeMetricFamily("dpipe_spool_unread_bytes", "Bytes in the spool no reader has read yet: how "
                                   "far the stream is behind the gateway.", labels=["input"])
        for i in s.get("inputs", []):
            if i.get("watermark_lag_s") is not None:
                lag.add_metric([i.get("name", "")], i["watermark_lag_s"])
            if i.get("backlog_bytes") is not None:
                backlog.add_metric([i.get("name", "")], i["backlog_bytes"])
            if i.get("unread_bytes") is not None:
                unread.add_metric([i.get("name", "")], i["unread_bytes"])
        yield lag
        yield backlog
        yield unread
        for key, value in sorted(s.get("beam_counters", {}).items()):
            yield _counter(metric_name(*key.split("/", 1)), f"Beam counter {key}.", value)
        for key, value in sorted(s.get("beam_gauges", {}).items()):
            yield _gauge(metric_name(*key.split("/", 1)), f"Beam gauge {key}.", value)


def _counter(name: str, doc: str, value: float | None) -> Metric:
    family = CounterMetricFamily(name, doc)
    if value is not None:
        family.add_metric([], value)
    return family


def _gauge(name: str, doc: str, value: float | None) -> Metric:
    family = GaugeMetricFamily(name, doc)
    if value is not None:
        family.add_metric([], value)
    return family
