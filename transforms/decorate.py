"""Decoration (the original's EsFilter, done right): pure per-event ops and the Decorate PTransform.

Ops, each configured with dotted keys (`_log_info.level`):
- `geoip`: `_cntry` and, where the DB has them, `_city`, `_lat`, `_lon`; private, reserved and malformed
  addresses get nothing but a counter. The first key present wins (the original let the last one win).
- `range`: `<key>_rg` = the label `lo-hi` of the half-open bucket `[lo, hi)` holding the value.
- `money`: `_usd` from an amount in minor units and a currency, or a `_usd_err` tag; never a drop.
- `normalize`: `<key>_norm` with every configured pattern replaced by `?`, in order (the original kept only
  the last normaliser's result), and `<key>_fp`, a stable fingerprint of it for grouping alarms.
- `del`: deep delete of dotted paths; it copies the path it walks, so a nested object shared with another
  branch is never changed (the original's shallow clone leaked deletes into other outputs).
Always: the index name (`@ym`, `@yw`, `@ymd`, UTC, custom prefixes such as `rs@ym`) and a deterministic
document id. Decorations of dotted keys are top-level names with `_` for `.` (`_log_info_level_rg`); the
original created literal dotted top-level keys.

An op that cannot apply raises OpError: the event goes to the dead letters with the op's name and reason.
"""

from __future__ import annotations

import bisect
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from transforms.event import MISSING, DeadLetter, Event, EventBatch, decode_raw, delete_path, tune_gc
from transforms.fields import compile_getter, compile_path, flat_name, is_number, range_labels
from transforms.geoip import GeoDb
from transforms.keys import doc_id, doc_ids, fingerprint
from transforms.tags import COUNTS, DEADLETTER


class OpError(Exception):
    """An op cannot apply to an event: `reason` (e.g. "range: level is not a number") is the dead letter's
    error, `detail` says what was found."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


# -- ops ----------------------------------------------------------------------------------------------------


class Op:
    """One decoration. `apply` changes the event in place (the decoration stage owns it), or raises OpError."""

    name = "op"

    def apply(self, event: Event, counts: dict[str, int]) -> None:
        raise NotImplementedError

    def columns(self) -> list[tuple[str, pa.DataType]]:
        """The decorations it may set, with their archive column types."""
        return []


class GeoIpOp(Op):
    name = "geoip"

    def __init__(self, keys: Sequence[str], db: str, fields: Sequence[str] = ("country", "city", "location"),
                 max_db_age_s: float | None = None, check_seconds: float = 60.0) -> None:
        self.getters = [compile_getter(k) for k in keys]
        self.db_path, self.check_seconds = db, check_seconds
        self.want_city, self.want_location = "city" in fields, "location" in fields
        self.max_db_age_s = max_db_age_s
        self._db: GeoDb | None = None
        self._stale_at = -1.0
        self._stale = False

    @property
    def db(self) -> GeoDb:
        if self._db is None:  # opened lazily: once per worker process, not when the pipeline is built
            self._db = GeoDb.shared(self.db_path, self.check_seconds)
        return self._db

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_db": None}

    def is_stale(self) -> bool:
        """The DB is older than `max_db_age` (checked against the wall clock at most once a minute)."""
        if self.max_db_age_s is None:
            return False
        now = time.monotonic()
        if now - self._stale_at >= 60:
            self._stale_at = now
            self._stale = time.time() - self.db.build_epoch > self.max_db_age_s
        return self._stale

    def apply(self, event: Event, counts: dict[str, int]) -> None:
        for get in self.getters:
            ip = get(event.fields)
            if ip is MISSING or ip is None:
                continue
            geo = self.db.lookup(ip) if type(ip) is str else "malformed"
            if isinstance(geo, str):
                counts[f"geoip_{geo}"] = counts.get(f"geoip_{geo}", 0) + 1
                return
            country, city, lat, lon = geo
            decor = decorations(event)
            decor["_cntry"] = country
            if self.want_city and city is not None:
                decor["_city"] = city
            if self.want_location and lat is not None:
                decor["_lat"], decor["_lon"] = lat, lon
            if self.is_stale():
                decor.setdefault("_tags", []).append("geoip_db_stale")
            return

    def columns(self) -> list[tuple[str, pa.DataType]]:
        cols = [("_cntry", pa.string())]
        if self.want_city:
            cols.append(("_city", pa.string()))
        if self.want_location:
            cols += [("_lat", pa.float64()), ("_lon", pa.float64())]
        if self.max_db_age_s is not None:
            cols.append(("_tags", pa.list_(pa.string())))
        return cols


class RangeOp(Op):
    name = "range"

    def __init__(self, keys: Sequence[str], bounds: Sequence[float]) -> None:
        self.keys = [(k, compile_getter(k), flat_name(k) + "_rg") for k in keys]
        self.bounds = list(bounds)
        self.labels = range_labels(self.bounds)

    def label(self, value: float) -> str | None:
        i = bisect.bisect_right(self.bounds, value)
        return self.labels[i - 1] if 0 < i < len(self.bounds) else None

    def apply(self, event: Event, counts: dict[str, int]) -> None:
        for key, get, out in self.keys:
            value = get(event.fields)
            if value is MISSING or value is None:
                continue
            if not is_number(value):
                raise OpError(f"range: {key} is not a number", f"got {type(value).__name__}: {value!r:.80}")
            label = self.label(value)
            if label is not None:
                decorations(event)[out] = label

    def columns(self) -> list[tuple[str, pa.DataType]]:
        return [(out, pa.string()) for _, _, out in self.keys]


class MoneyOp(Op):
    """`_usd` = amount / 10**exponent(currency) * rate(currency): USD, from an amount in minor units."""

    name = "money"

    def __init__(self, amount: str, currency: str, rates: dict[str, float], exponents: dict[str, int]) -> None:
        self.amount_key, self.get_amount = amount, compile_getter(amount)
        self.get_currency = compile_getter(currency)
        self.factor = {c: r / 10 ** exponents.get(c, 2) for c, r in rates.items()}

    def apply(self, event: Event, counts: dict[str, int]) -> None:
        amount = self.get_amount(event.fields)
        if amount is MISSING or amount is None:
            return
        if not is_number(amount):
            raise OpError(f"money: {self.amount_key} is not a number", f"got {type(amount).__name__}: {amount!r:.80}")
        currency = self.get_currency(event.fields)
        if currency is MISSING or currency is None:
            decorations(event)["_usd_err"] = "currency missing"
            return
        factor = self.factor.get(currency) if type(currency) is str else None
        if factor is None:
            decorations(event)["_usd_err"] = f"currency unknown: {currency}"
            return
        decorations(event)["_usd"] = round(amount * factor, 6)

    def columns(self) -> list[tuple[str, pa.DataType]]:
        return [("_usd", pa.float64()), ("_usd_err", pa.string())]


BUILTIN_PATTERNS = {
    "batch_token": r"pre: .*; current: .*",
    "uuid": r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b",
    "ip": r"\b\d{1,3}(?:\.\d{1,3}){3}\b",
    "hex": r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{6,}\b",
    "digit": r"\d+",
}


class NormalizeOp(Op):
    name = "normalize"

    def __init__(self, keys: Sequence[str], patterns: Sequence[str]) -> None:
        self.keys = [(k, compile_getter(k), flat_name(k)) for k in keys]
        self.patterns = [re.compile(p) for p in patterns]

    def normalize(self, text: str) -> str:
        for pattern in self.patterns:
            text = pattern.sub("?", text)
        return text

    def apply(self, event: Event, counts: dict[str, int]) -> None:
        for key, get, flat in self.keys:
            value = get(event.fields)
            if value is MISSING or value is None:
                continue
            if type(value) is not str:
                if not is_number(value):
                    raise OpError(f"normalize: {key} is not text", f"got {type(value).__name__}: {value!r:.80}")
                value = str(value)
            norm = self.normalize(value)
            decorations(event)[flat + "_norm"] = norm
            decorations(event)[flat + "_fp"] = fingerprint(norm)

    def columns(self) -> list[tuple[str, pa.DataType]]:
        return [c for *_, flat in self.keys for c in ((flat + "_norm", pa.string()), (flat + "_fp", pa.string()))]


class DelOp(Op):
    name = "del"

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = [compile_path(k) for k in keys]

    def apply(self, event: Event, counts: dict[str, int]) -> None:
        for path in self.keys:
            if delete_path(event.fields, path):
                event.payload = None  # the archive re-serialises the changed fields


# -- always: index name and document id -------------------------------------------------------------------


class IndexNamer:
    """`@ym` -> `<prefix>_YYYY_MM`, `@yw` (or `@ymw`) -> `<prefix>_YYYY_wWW` (ISO week), `@ymd` ->
    `<prefix>_YYYY_MM_DD`, UTC; `rs@ym` uses `rs` as the prefix; a pattern without `@` is a fixed name
    `<prefix>_<pattern>`."""

    FORMATS = {"@ym": "%Y_%m", "@yw": "%G_w%V", "@ymw": "%G_w%V", "@ymd": "%Y_%m_%d"}

    def __init__(self, prefix: str, pattern: str) -> None:
        at = pattern.find("@")
        if at < 0:
            self.fixed: str | None = f"{prefix}_{pattern}" if pattern else prefix
            return
        self.fixed = None
        self.prefix = pattern[:at] or prefix
        self.fmt = self.FORMATS[pattern[at:]]
        self._by_day: dict[int, str] = {}

    def __call__(self, ts_ms: int) -> str:
        if self.fixed is not None:
            return self.fixed
        day = ts_ms // 86_400_000
        name = self._by_day.get(day)
        if name is None:
            name = f"{self.prefix}_{datetime.fromtimestamp(day * 86400, UTC).strftime(self.fmt)}"
            self._by_day[day] = name
        return name


# -- rules and the transform --------------------------------------------------------------------------------


@dataclass
class Rule:
    """Ops applied to the events a matcher selects (`matcher` is transforms.route.Matcher or None = all)."""

    ops: list[Op]
    matcher: Any = None


def rule_columns(rules: Sequence[Rule]) -> list[tuple[str, pa.DataType]]:
    seen: dict[str, pa.DataType] = {}
    for rule in rules:
        for op in rule.ops:
            for name, typ in op.columns():
                seen.setdefault(name, typ)
    return list(seen.items())


def decorations(event: Event) -> dict[str, Any]:
    """The event's decorations, made on first use (most events of a route get none)."""
    if event.decor is None:
        event.decor = {}
    return event.decor


def apply_ops(event: Event, ops: Sequence[Op], counts: dict[str, int]) -> DeadLetter | None:
    """Run ops in order on one event; a failure becomes a dead letter (and the event must be dropped)."""
    try:
        for op in ops:
            op.apply(event, counts)
    except OpError as err:
        return DeadLetter(decode_raw(event.raw), err.reason, event.source, event.offset, "decorate", err.detail,
                          event.category)
    return None


def decorate_batch(
    batch: EventBatch, rules: Sequence[Rule], namer: IndexNamer, counts: dict[str, int]
) -> tuple[EventBatch, list[DeadLetter]]:
    """Decorate every event of a batch: each comes out decorated, or as one dead letter."""
    out = EventBatch(batch.source, batch.shard, batch.seq, watermark_ms=batch.watermark_ms)
    dead: list[DeadLetter] = []
    by_category: dict[str, list[Rule]] = {}
    for event, id_ in zip(batch.events, _batch_ids(batch.events), strict=True):
        event.decor = {}
        event.index = namer(event.ts)
        event.doc_id = id_
        candidates = by_category.get(event.category)
        if candidates is None:
            candidates = by_category[event.category] = [
                r for r in rules if r.matcher is None or r.matcher.category_ok(event.category)
            ]
        failed = None
        for rule in candidates:
            if rule.matcher is None or rule.matcher.event_ok(event):
                failed = apply_ops(event, rule.ops, counts)
                if failed:
                    break
        if failed:
            dead.append(failed)
        else:
            out.events.append(event)
    return out, dead


def _batch_ids(events: list[Event]) -> list[str]:
    """Document ids of a batch's events: at once when they share a source (a batch is one shard's)."""
    if events and all(e.source is events[0].source for e in events):
        return doc_ids(events[0].source, [e.offset for e in events], [e.raw for e in events])
    return [doc_id(e.source, e.offset, e.raw) for e in events]


class _DecorateDoFn(beam.DoFn):
    def __init__(self, rules: list[Rule], namer: IndexNamer) -> None:
        self._rules, self._namer = rules, namer
        self._dead = Metrics.counter("dpipe.decorate", "dead_letters")

    def setup(self) -> None:
        tune_gc()
        for rule in self._rules:
            for op in rule.ops:
                if isinstance(op, GeoIpOp):
                    Metrics.gauge("dpipe.geoip", "db_build_epoch").set(op.db.build_epoch)

    def process(self, batch: EventBatch) -> Iterator[Any]:
        counts: dict[str, int] = {}
        events, dead = decorate_batch(batch, self._rules, self._namer, counts)
        self._dead.inc(len(dead))
        if events.events:
            yield events
        for letter in dead:
            yield beam.pvalue.TaggedOutput(DEADLETTER, letter)
        if counts:
            for name, n in counts.items():
                Metrics.counter("dpipe.decorate", name).inc(n)
            yield beam.pvalue.TaggedOutput(COUNTS, {"decorate": counts})


class Decorate(beam.PTransform):
    """EventBatch -> decorated EventBatch (main), DeadLetter (`deadletter`), count dicts (`counts`)."""

    def __init__(self, rules: list[Rule], namer: IndexNamer) -> None:
        super().__init__()
        self._fn = _DecorateDoFn(rules, namer)

    def expand(self, batches: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return batches | "Decorate" >> beam.ParDo(self._fn).with_output_types(EventBatch).with_outputs(
            DEADLETTER, COUNTS, main="events"
        )
