"""The dashboard's page data, built from an output folder (a backfill's or a stream's).

Pure functions from result rows to chart-ready dicts, one per page, so that the static report, the live
page and the tests all see the same numbers. Streams re-emit corrected rows under the same `_id`: the last
row per `_id` wins, files read oldest first.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

ANALYSES = ("alarms", "counters", "cardinality", "stats", "funnels", "issues")
SAMPLES_PER_REASON = 3
MAX_SERIES = 8  # lines per chart: the biggest keys, the rest summed as "other"
TOP_VALUES = 10
Row = dict[str, Any]


class _FileCache:
    """What `parse` makes of a file, redone only when its size or mtime changes (the live page polls)."""

    def __init__(self, parse: Callable[[Path], Any]) -> None:
        self._parse = parse
        self._done: dict[Path, tuple[tuple[int, int], Any]] = {}

    def get(self, path: Path) -> Any:
        st = path.stat()
        stat = (st.st_size, st.st_mtime_ns)
        cached = self._done.get(path)
        if cached is None or cached[0] != stat:
            cached = (stat, self._parse(path))
            self._done[path] = cached
        return cached[1]


def _json_lines(path: Path) -> list[Row]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


_ROWS = _FileCache(_json_lines)
_PARQUET_ROWS = _FileCache(lambda path: pq.ParquetFile(path).metadata.num_rows)


def read_rows(folder: Path) -> list[Row]:
    """Every row of `folder/*.jsonl`, files oldest first (a stream's later panes come later)."""
    if not folder.is_dir():
        return []
    files = sorted(folder.glob("*.jsonl"), key=lambda p: (p.stat().st_mtime_ns, p.name))
    return [row for path in files for row in _ROWS.get(path)]


def latest(rows: Iterable[Row]) -> list[Row]:
    """The last row per `_id` (rows without one are all kept), in first-seen order."""
    by_id: dict[Any, Row] = {}
    for n, row in enumerate(rows):
        by_id[row.get("_id", ("row", n))] = row
    return list(by_id.values())


def utc_ms(value: str) -> int:
    """'2014-01-18T14:00:00Z' or '2014-01-18' -> epoch ms, UTC."""
    text = value.replace("Z", "+00:00")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def key_label(key: Any) -> str:
    """A result's key for people: 'fr', 'area=fr message_fp=8bed', or 'all' for a global one."""
    if key is None or key == "":
        return "all"
    if isinstance(key, dict):
        return " ".join(f"{k}={v}" for k, v in key.items())
    if isinstance(key, list | tuple):
        return ",".join(str(k) for k in key)
    return str(key)


def top_series(series: dict[str, dict[int, float]], limit: int = MAX_SERIES) -> list[dict[str, Any]]:
    """{label: {t: y}} -> [{label, points: [[t, y], ...]}], biggest totals first; the rest summed as 'other'."""
    ranked = sorted(series.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    shown, rest = ranked[:limit], ranked[limit:]
    if rest:
        other: dict[int, float] = defaultdict(float)
        for _, points in rest:
            for t, y in points.items():
                other[t] += y
        shown.append((f"other ({len(rest)})", other))
    return [{"label": label, "points": sorted([t, y] for t, y in points.items())} for label, points in shown]


# ---- pages ----


def overview(summary: Row | None, dead_letters: list[Row], outputs: dict[str, int],
             events: dict[str, int]) -> Row:
    """Totals, dead letters by reason with samples, and rows per sink.

    A backfill's counts come from summary.json; a stream has none, so they come from the files themselves.
    """
    reasons: dict[str, int] = defaultdict(int)
    samples: dict[str, list[Row]] = defaultdict(list)
    for d in dead_letters:
        reason = d.get("error") or "unknown"
        reasons[reason] += 1
        if len(samples[reason]) < SAMPLES_PER_REASON:
            samples[reason].append({k: d.get(k) for k in ("raw", "detail", "source", "offset")})
    if summary is not None:
        reasons = dict(summary.get("dead_letter_reasons", {}))
        categories = dict(summary.get("categories", {}))
        totals = {k: summary.get(k, 0) for k in ("lines_read", "events", "dead_letters", "bytes_read", "files_read")}
    else:
        categories = dict(events)
        totals = {"events": sum(events.values()), "dead_letters": len(dead_letters)}
    sinks = {"events": sum(categories.values()), "deadletter": sum(reasons.values()), **outputs}
    ranked = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    return {
        "totals": totals,
        "categories": dict(sorted(categories.items(), key=lambda kv: (-kv[1], kv[0]))),
        "dead_letters": [{"reason": r, "count": n, "samples": samples.get(r, [])} for r, n in ranked],
        "routes": dict((summary or {}).get("routes", {})),
        "sinks": [{"sink": s, "rows": n, "files": (summary or {}).get("files", {}).get(s)} for s, n in sinks.items()],
        "balanced": (summary or {}).get("balanced"),
    }


def alarms(rows: list[Row]) -> Row:
    """Firings, newest window first, with their window, value, threshold and samples."""
    firings = [{
        "rule": r.get("rule"), "key": key_label(r.get("key")), "severity": r.get("severity"),
        "start": utc_ms(r["window"]["start"]), "end": utc_ms(r["window"]["end"]),
        "aggregate": r.get("aggregate"), "value": r.get("value"), "condition": condition(r),
        "samples": r.get("samples", []),
    } for r in rows]
    firings.sort(key=lambda f: (-f["start"], f["rule"] or "", f["key"]))
    per_rule: dict[str, int] = defaultdict(int)
    for f in firings:
        per_rule[f["rule"]] += 1
    return {"firings": firings, "per_rule": dict(sorted(per_rule.items()))}


def condition(alarm: Row) -> str:
    """What made an alarm fire, as the console notifier says it: '>= 100' or '+300% over 6'."""
    if alarm.get("change_percent") is not None:
        return f"+{alarm['change_percent']:g}% over {alarm.get('previous', 0):,g}"
    return f"{alarm.get('op', '')} {alarm.get('threshold', 0):,g}"


def counters(rows: list[Row]) -> Row:
    """Per counter: a time series per key (the sum of its field when it has one, else the count)."""
    series: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    meta: dict[str, Row] = {}
    for r in rows:
        name = r["counter"]
        value = (r.get("sum") or 0) if r.get("field") else r["count"]
        series[name][key_label(r.get("key"))][utc_ms(r["start"])] = value
        meta.setdefault(name, {"field": r.get("field"), "interval_s": r.get("interval_s")})
    out = []
    for name in sorted(series):
        totals = {k: sum(p.values()) for k, p in series[name].items()}
        out.append({"counter": name, **meta[name], "measure": f"sum of {meta[name]['field']}"
                    if meta[name]["field"] else "count", "series": top_series(series[name]),
                    "totals": dict(sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])))})
    return {"counters": out}


def cardinality(rows: list[Row]) -> Row:
    """Per counter and period (day, week, month): the unique estimate per key over time."""
    series: dict[tuple[str, str], dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        series[(r["counter"], r["period"])][key_label(r.get("key"))][utc_ms(r["start"])] = r["estimate"]
    order = {"day": 0, "week": 1, "month": 2}
    return {"cardinality": [
        {"counter": counter, "period": period, "series": top_series(series[(counter, period)])}
        for counter, period in sorted(series, key=lambda cp: (cp[0], order.get(cp[1], 9), cp[1]))]}


def statistics(rows: list[Row]) -> Row:
    """Per quantile statistic: histograms summed over windows and the latest quantiles per key; per top-N
    statistic: the values' counts summed over windows (a lower bound when a value fell out of a window's top)."""
    quantiles: dict[str, dict[str, list[Row]]] = defaultdict(lambda: defaultdict(list))
    tops: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    fields: dict[str, str] = {}
    for r in rows:
        fields.setdefault(r["stat"], r.get("field"))
        if "top" in r:
            for item in r["top"]:
                tops[r["stat"]][str(item["value"])] += item["count"]
        else:
            quantiles[r["stat"]][key_label(r.get("key"))].append(r)
    out = []
    for stat in sorted(quantiles):
        keys, histogram = [], {}
        for key, windows in sorted(quantiles[stat].items(), key=lambda kv: (-sum(w["count"] for w in kv[1]), kv[0])):
            windows.sort(key=lambda w: utc_ms(w["start"]))
            last = windows[-1]
            bins: dict[str, int] = {}
            for w in windows:
                for label, n in (w.get("histogram") or {}).items():
                    bins[label] = bins.get(label, 0) + n
            histogram[key] = bins
            keys.append({"key": key, "windows": len(windows), "count": sum(w["count"] for w in windows),
                         "min": min(w["min"] for w in windows), "max": max(w["max"] for w in windows),
                         "latest_start": utc_ms(last["start"]),
                         **{q: last.get(q) for q in sorted(k for k in last if k[:1] == "p" and k[1:].isdigit())}})
        out.append({"stat": stat, "field": fields[stat], "kind": "quantiles", "keys": keys,
                    "bins": list(next(iter(histogram.values()), {})), "histogram": histogram})
    for stat in sorted(tops):
        ranked = sorted(tops[stat].items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_VALUES]
        out.append({"stat": stat, "field": fields[stat], "kind": "top", "top": [{"value": v, "count": n}
                                                                                 for v, n in ranked]})
    return {"stats": out}


def funnels(rows: list[Row]) -> Row:
    """Per funnel and period start: users per step and conversions per dimension value."""
    groups: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for r in rows:
        groups[(r["funnel"], r.get("period", ""), r["start"])].append(r)
    out = []
    for (name, period, start), members in sorted(groups.items()):
        members.sort(key=lambda r: key_label(r.get("dimensions")))
        steps = [s["step"] for s in members[0]["steps"]]
        out.append({"funnel": name, "period": period, "start": start, "steps": steps, "rows": [
            {"dimensions": key_label(r.get("dimensions")), "users": [s["users"] for s in r["steps"]],
             "conversion": [s["conversion"] for s in r["steps"]], "overall": r.get("overall")}
            for r in members]})
    return {"funnels": out}


def issues(rows: list[Row]) -> Row:
    """The error-issues component's rows as a table: whatever plain fields they have, most seen first."""
    columns: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in columns and not k.startswith("_") and not isinstance(v, dict | list):
                columns.append(k)
    count = next((c for c in ("count", "events", "occurrences") if c in columns), None)
    ordered = sorted(rows, key=lambda r: -(r.get(count) or 0)) if count else rows
    return {"columns": columns, "rows": [[r.get(c) for c in columns] for r in ordered]}


def event_counts(events: Path) -> dict[str, int]:
    """Rows per category in the Parquet archive, from the files' footers (no data is read)."""
    counts: dict[str, int] = defaultdict(int)
    for path in events.glob("category=*/date=*/*.parquet"):
        category = path.parent.parent.name.removeprefix("category=")
        try:
            counts[category] += _PARQUET_ROWS.get(path)
        except OSError:  # a file being replaced under us: counted on the next poll
            continue
    return dict(counts)


def load(output: str | Path, status: Row | None = None) -> Row:
    """Every page's data for an output folder; `status` is the live stream's (None for a finished run)."""
    out = Path(output)
    summary_path = out / "summary.json"
    summary = orjson.loads(summary_path.read_bytes()) if summary_path.is_file() else None
    results = {name: latest(read_rows(out / name)) for name in ANALYSES}
    outputs = {name: len(rows) for name, rows in results.items() if (out / name).is_dir()}
    events = {} if summary is not None else event_counts(out / "events")
    pages: Row = {
        "overview": overview(summary, latest(read_rows(out / "deadletter")), outputs, events),
        "alarms": alarms(results["alarms"]),
        "counters": counters(results["counters"]),
        "cardinality": cardinality(results["cardinality"]),
        "statistics": statistics(results["stats"]),
        "funnels": funnels(results["funnels"]),
    }
    if (out / "issues").is_dir():
        pages["issues"] = issues(results["issues"])
    return {"output": str(out), "generated_ms": int(time.time() * 1000), "status": status, "pages": pages}


def outputs_counts(output: str | Path) -> tuple[dict[str, int], dict[str, int]]:
    """(rows per sink, dead letters per reason) as the files hold them now: the stream's /status."""
    out = Path(output)
    dead = latest(read_rows(out / "deadletter"))  # a stream re-read after a crash rewrites them under their _id
    reasons: dict[str, int] = defaultdict(int)
    for d in dead:
        reasons[d.get("error") or "unknown"] += 1
    sinks = {"events": sum(event_counts(out / "events").values()), "deadletter": len(dead)}
    sinks.update({name: len(latest(read_rows(out / name))) for name in ANALYSES if (out / name).is_dir()})
    return sinks, dict(reasons)


def files_status(output: str | Path) -> Row:
    """`/status` when only an output folder is served (no stream): what its files hold."""
    sinks, reasons = outputs_counts(output)
    done = (Path(output) / "summary.json").is_file()
    return {"runner": None, "state": "DONE" if done else "FILES", "output": str(output), "inputs": [],
            "lines_out": sinks["events"] + sinks["deadletter"], "sinks": sinks, "dead_letters": reasons,
            "problems": [] if Path(output).is_dir() else [f"{output} is not a folder"],
            "healthy": Path(output).is_dir()}
