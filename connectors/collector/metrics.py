"""The collector's own numbers: Prometheus text on `/metrics`, and a one-line status for the log.

Counters are per source where a line is concerned (read, skipped, cut, sent, acknowledged, replayed after a
restart), per status code for answers, per reason for retries; gauges (files watched, bytes behind per file,
bytes buffered, requests in flight) are read from the collector when asked.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from connectors.collector.lines import Counts

Labels = tuple[tuple[str, str], ...]

HELP = {
    "lines_read_total": ("counter", "Lines read from files (empty and ignored ones included)."),
    "lines_skipped_total": ("counter", "Lines not sent: empty, or matched by an ignore rule."),
    "lines_cut_total": ("counter", "Lines longer than tail.max_line_bytes, sent cut as dead letters."),
    "lines_time_unparsed_total": ("counter", "Raw lines whose time did not match: stamped with the read time."),
    "lines_sent_total": ("counter", "Lines POSTed (once per line, however often its batch was retried)."),
    "lines_acked_total": ("counter", "Lines the gateway answered 200 for."),
    "lines_replayed_total": ("counter", "Lines re-sent after a restart because the previous run had sent them "
                                        "without a checkpointed 200: the most a crash can have repeated."),
    "responses_total": ("counter", "Gateway answers by status code (0: connection error or timeout)."),
    "retries_total": ("counter", "Batch retries, by reason."),
    "rate_limited_total": ("counter", "429 answers (Retry-After honoured)."),
    "failovers_total": ("counter", "Switches to another gateway URL."),
    "files_rotated_total": ("counter", "Followed files renamed or deleted away from every glob."),
    "files_truncated_total": ("counter", "Files truncated or rewritten, read again from 0."),
    "files_released_total": ("counter", "Files closed after being read to their end."),
    "files_unknown_category_total": ("counter", "Files skipped: no category in their name (set one)."),
    "checkpoints_written_total": ("counter", "Checkpoint files written."),
    "files_watched": ("gauge", "Files open and followed."),
    "bytes_behind": ("gauge", "Bytes of a file not yet acknowledged by the gateway."),
    "buffered_bytes": ("gauge", "Bytes read and not yet acknowledged (bounded by batch.max_buffer_bytes)."),
    "requests_in_flight": ("gauge", "POSTs waiting for an answer."),
    "gateway_active": ("gauge", "1 for the gateway URL batches go to now."),
}
PREFIX = "dpipe_collector_"


class Metrics:
    def __init__(self, sources: list[str]) -> None:
        self.sources = sources
        self.values: Counter[tuple[str, Labels]] = Counter()

    def inc(self, name: str, n: int = 1, **labels: str) -> None:
        self.values[name, tuple(sorted(labels.items()))] += n

    def count_read(self, source: int, counts: Counts) -> None:
        label = self.sources[source]
        self.inc("lines_read_total", counts.read, source=label)
        if counts.empty:
            self.inc("lines_skipped_total", counts.empty, source=label, reason="empty")
        if counts.ignored:
            self.inc("lines_skipped_total", counts.ignored, source=label, reason="ignored")
        if counts.cut:
            self.inc("lines_cut_total", counts.cut, source=label)
        if counts.time_unparsed:
            self.inc("lines_time_unparsed_total", counts.time_unparsed, source=label)

    def total(self, name: str) -> int:
        return sum(v for (n, _), v in self.values.items() if n == name)

    def render(self, gauges: Callable[[], Iterable[tuple[str, Labels, float]]]) -> str:
        """Prometheus text exposition of the counters and the gauges given now."""
        samples: dict[str, list[tuple[Labels, float]]] = {}
        for (name, labels), value in sorted(self.values.items()):
            samples.setdefault(name, []).append((labels, value))
        for source in self.sources:  # present from the start, so a rate has a first point
            for name in ("lines_read_total", "lines_sent_total", "lines_acked_total"):
                if not any(dict(labels).get("source") == source for labels, _ in samples.get(name, [])):
                    samples.setdefault(name, []).append(((("source", source),), 0))
        for name, labels, value in gauges():
            samples.setdefault(name, []).append((labels, value))
        out = []
        for name, rows in samples.items():
            kind, text = HELP[name]
            out += [f"# HELP {PREFIX}{name} {text}", f"# TYPE {PREFIX}{name} {kind}"]
            for labels, value in rows:
                shown = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                out.append(f"{PREFIX}{name}{{{shown}}} {value:g}" if shown else f"{PREFIX}{name} {value:g}")
        return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
