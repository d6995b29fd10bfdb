"""python -m pipelines.generate --output DIR [--lines N] [--days D] [--users U] [--seed S]

A realistic, deterministic ALS archive for demos, tests and benchmarks, with its ground truth.

Writes `DIR/logs/` (one file per category and day, named like the original's: `pv_20140117230103_1[.gz]` for
history, `pv.0.log` for the live last day) and `DIR/manifest.json`, which records what was built in:

- categories and shapes of the original dpipe: dau (uid/date/ip, ms timestamps); pv with a nested
  `_log_info` (uid, level, ip, host, uri, elapsed...); payment with `data.amount` in minor units and
  `data.currency`; session enter/exit; error and mongo_err messages with ids and tokens inside; phperror with
  host/msg (second timestamps); click with the funnel's actions;
- areas us, fr, de, ae, th, nl; a skewed user population (a few heavy users, a long tail);
- about 1% malformed lines, one kind per dead-letter reason, counted per reason in the manifest; another
  0.5% of valid lines end in `\\r\\n`;
- the payment funnel: visit (click action=visit) -> cart (click action=cart) -> pay (payment type=OK), each
  step within 30 minutes of the previous one, with per-area drop-offs `FUNNEL_RATES`; the manifest has the
  exact users per step and area;
- one incident: `INCIDENT` errors in one area within one minute (the manifest says which minute), against a
  baseline of well under one error per area and minute.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import random
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

AREAS = ("us", "fr", "de", "ae", "th", "nl")
AREA_WEIGHTS = (0.35, 0.15, 0.15, 0.10, 0.15, 0.10)
CURRENCY = {"us": "USD", "fr": "EUR", "de": "EUR", "nl": "EUR", "ae": "AED", "th": "THB"}
PRICES = (99, 499, 999, 1999, 4999)  # minor units (cents)
# share of the valid background lines per category (the funnel and the incident come on top)
CATEGORY_WEIGHTS = {
    "pv": 0.46, "dau": 0.10, "session": 0.12, "error": 0.07, "mongo_err": 0.03, "phperror": 0.04,
}
FUNNEL_SHARE = 0.08  # about this share of all lines are funnel events (click visit/cart, payment)
# per area: (P(cart | visit), P(pay | cart))
FUNNEL_RATES = {
    "us": (0.50, 0.40), "fr": (0.45, 0.35), "de": (0.40, 0.30),
    "ae": (0.35, 0.25), "th": (0.30, 0.20), "nl": (0.42, 0.33),
}
FUNNEL_STEPS = ("visit", "cart", "pay")
GENERATOR_VERSION = 2  # bump when the same spec gives different data
INCIDENT = {"area": "fr", "day": 1, "minute": "14:05", "message": "mysql gone away: host db-3 errno 2006"}
MALFORMED_SHARE = 0.01
CRLF_SHARE = 0.005
SECOND_TS_CATEGORIES = {"phperror", "session"}  # written with second timestamps, the rest in ms

# malformed line kind -> the dead-letter reason dpipe must give it
MALFORMED_KINDS = {
    "empty": "empty line",
    "fields": "not 3 fields",
    "area": "empty area",
    "ts_small": "timestamp invalid",
    "ts_text": "timestamp invalid",
    "truncated": "payload not json",
    "not_object": "payload not json",
}
ERROR_MESSAGES = (
    "Energy Error, Client: {a}, Server: {b}, info:batch",
    "batch token error! pre: {t1}; current: {t2}",
    "payment error: OK",
    "quest {a} not found for user {uid}",
)
PHP_ERRORS = (
    "E_WARNING: Illegal offset type in unset  - /mnt/htdocs/rs/map.php [{a}]",
    "E_NOTICE: Undefined index: reward_{a} - /mnt/htdocs/rs/quest.php [{b}]",
    "E_ERROR: Allowed memory size of 268435456 bytes exhausted - /mnt/htdocs/rs/user.php [{b}]",
)
PUBLIC_FIRST_OCTETS = (24, 31, 46, 62, 77, 81, 90, 95, 109, 125, 171, 182, 203, 213)
URIS = ("/", "/api/energy", "/api/quest/complete", "/api/shop/buy", "/api/friends", "/api/map/load")


@dataclass(frozen=True)
class Spec:
    lines: int = 200_000
    days: int = 3
    users: int = 5_000
    seed: int = 7
    start: str = "2014-01-17"
    compression: str = "mixed"  # mixed: first history day plain, other history days gzip; or gz, bz2, none


class _Gen:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.t0 = int(datetime.fromisoformat(spec.start).replace(tzinfo=UTC).timestamp())
        self.rows: dict[tuple[str, int], list[tuple[float, bytes]]] = {}

    # -- people and places ------------------------------------------------------------------------------
    def uid(self) -> int:
        """Skewed: uid 1 is the heaviest user; a third of the traffic comes from the top 4% of users."""
        return 1 + int(self.spec.users * self.rng.random() ** 3)

    @staticmethod
    def area_of(uid: int) -> str:
        """A user's home area (the funnel's users stay in theirs)."""
        return AREAS[uid % len(AREAS)]

    def area(self) -> str:
        return self.rng.choices(AREAS, AREA_WEIGHTS)[0]

    @staticmethod
    def ip(uid: int) -> str:
        """A user's public address: stable per user (as a real user's mostly is), spread over the world."""
        h = (uid * 2654435761) & 0xFFFFFFFF
        first = PUBLIC_FIRST_OCTETS[h % len(PUBLIC_FIRST_OCTETS)]
        return f"{first}.{(h >> 8) & 255}.{(h >> 16) & 255}.{1 + (h >> 24) % 254}"

    def host(self) -> str:
        return f"172.31.{self.rng.randint(0, 63)}.{self.rng.randint(1, 254)}"

    def token(self) -> str:
        return f"{self.rng.getrandbits(40):010x}"

    # -- payloads -----------------------------------------------------------------------------------------
    def payload(self, category: str, ts: float) -> dict[str, Any]:
        r = self.rng
        uid = self.uid()
        if category == "pv":
            uri = r.choice(URIS)
            return {
                "uri": uri,
                "_log_info": {
                    "uid": uid, "snsid": str(100000000000 + uid), "level": min(100, 1 + int(r.expovariate(0.08))),
                    "gender": r.choice(("male", "female")), "ab": {"pay": r.choice("ab"), "quest": r.choice("ab")},
                    "payment_cash": r.randint(0, 500), "script_id": r.getrandbits(52), "serial": r.randint(1, 9),
                    "uri": uri, "host": self.host(), "ip": self.ip(uid),
                    "callee": f"POST+{uri}+{self.token()[:7]}", "sid": None if r.random() < 0.3 else self.token(),
                    "elapsed": round(r.lognormvariate(-4.2, 0.8), 4),
                },
            }
        if category == "dau":
            day = datetime.fromtimestamp(ts, UTC).strftime("%Y%m%d")
            return {"uid": uid, "date": int(day), "ip": self.ip(uid)}
        if category == "session":
            return {"sid": self.token(), "type": r.choice(("enter", "exit")), "lv": r.randint(1, 100),
                    "guid": uid, "ver": r.choice(("1.8.2", "1.9.0", "1.9.1"))}
        if category == "error":
            message = r.choice(ERROR_MESSAGES).format(
                a=r.randint(1, 500), b=r.randint(1, 500), t1=self.token(), t2=self.token(), uid=uid
            )
            return {"class": r.choice(("EnergyService", "TokenService", "PaymentService", "QuestService")),
                    "message": message, "uid": uid}
        if category == "mongo_err":
            return {"message": f"E11000 duplicate key error index: rs.users.$_id_ dup key: {{ : {uid} }}"}
        if category == "phperror":
            when = datetime.fromtimestamp(ts, UTC).strftime("%m-%d %H:%M:%S")
            msg = r.choice(PHP_ERRORS).format(a=r.randint(1, 4000), b=r.randint(1, 900))
            return {"host": self.host(), "msg": f"[{when}] {msg},{self.host()}"}
        raise ValueError(category)

    def add(self, category: str, ts: float, area: str, payload: dict[str, Any]) -> None:
        day = int((ts - self.t0) // 86400)
        stamp = int(ts) if category in SECOND_TS_CATEGORIES else int(ts * 1000)
        line = b"%s,%d,%s" % (area.encode(), stamp, orjson.dumps(payload))
        self.rows.setdefault((category, day), []).append((ts, line))

    def when(self) -> float:
        return self.t0 + self.rng.random() * self.spec.days * 86400

    # -- the parts ------------------------------------------------------------------------------------------
    def background(self, count: int) -> None:
        cats, weights = zip(*CATEGORY_WEIGHTS.items(), strict=True)
        for category in self.rng.choices(cats, weights, k=count):
            ts = self.when()
            self.add(category, ts, self.area(), self.payload(category, ts))

    def funnel(self, journeys: int) -> dict[str, dict[str, int]]:
        r = self.rng
        truth = {a: dict.fromkeys(FUNNEL_STEPS, 0) for a in AREAS}
        visitors = r.sample(range(1, self.spec.users + 1), min(journeys, self.spec.users))
        last = self.t0 + self.spec.days * 86400 - 1
        for uid in visitors:
            area = self.area_of(uid)
            p_cart, p_pay = FUNNEL_RATES[area]
            ts = self.t0 + r.random() * (self.spec.days * 86400 - 3600)
            self.add("click", ts, area, {"action": "visit", "uid": uid, "guid": uid, "ver": "1.9.1", "type": "shop"})
            truth[area]["visit"] += 1
            if r.random() >= p_cart:
                continue
            ts = min(last, ts + r.uniform(60, 1800))
            self.add("click", ts, area, {"action": "cart", "uid": uid, "guid": uid, "ver": "1.9.1", "type": "shop"})
            truth[area]["cart"] += 1
            if r.random() >= p_pay:
                continue
            ts = min(last, ts + r.uniform(60, 1800))
            currency = CURRENCY[area]
            roll = r.random()
            data: dict[str, Any] = {"amount": r.choice(PRICES)}
            if roll < 0.01:
                pass  # no currency: dpipe must tag it, not drop it
            elif roll < 0.02:
                data["currency"] = "XXX"  # unknown currency
            else:
                data["currency"] = currency
            self.add("payment", ts, area, {"type": "OK", "uid": uid, "data": data,
                                           "_log_info": {"uid": uid, "ip": self.ip(uid)}})
            truth[area]["pay"] += 1
        return truth

    def incident(self, count: int) -> dict[str, Any]:
        day = min(INCIDENT["day"], self.spec.days - 1)
        hh, mm = map(int, INCIDENT["minute"].split(":"))
        minute = self.t0 + day * 86400 + hh * 3600 + mm * 60
        for _ in range(count):
            ts = minute + self.rng.random() * 59.9
            self.add("error", ts, INCIDENT["area"], {"class": "DbService", "message": INCIDENT["message"],
                                                     "uid": self.uid()})
        start = datetime.fromtimestamp(minute, UTC)
        return {"area": INCIDENT["area"], "category": "error", "message": INCIDENT["message"], "lines": count,
                "start": start.isoformat(), "end": (start + timedelta(minutes=1)).isoformat()}

    def malformed(self, kind: str, area: str, ts: float) -> bytes:
        ms = int(ts * 1000)
        return {
            "empty": b"",
            "fields": b"%s,%d" % (area.encode(), ms),
            "area": b",%d,{}" % ms,
            "ts_small": b"%s,45,{}" % area.encode(),
            "ts_text": b"%s,yesterday,{}" % area.encode(),
            "truncated": b'%s,%d,{"action":"sell","ide' % (area.encode(), ms),
            "not_object": b'%s,%d,"\\/Sysy64\\/friends?fields=id,installed | Invalid OAuth"' % (area.encode(), ms),
        }[kind]


def file_name(category: str, day: int, spec: Spec, start: datetime) -> str:
    if day == spec.days - 1:
        return f"{category}.0.log"
    stamp = (start + timedelta(days=day)).strftime("%Y%m%d") + "230103"
    base = f"{category}_{stamp}_1"
    ext = {"gz": ".gz", "bz2": ".bz2", "none": ""}.get(spec.compression)
    if ext is None:  # mixed
        ext = "" if day == 0 else ".gz"
    return base + ext


def generate(out_dir: str | Path, spec: Spec = Spec()) -> dict[str, Any]:
    """Write the archive and its manifest; returns the manifest."""
    gen = _Gen(spec)
    r = gen.rng
    malformed_n = round(spec.lines * MALFORMED_SHARE)
    incident_n = max(200, spec.lines // 500)
    journeys = int(spec.lines * FUNNEL_SHARE / 1.6)
    funnel_truth = gen.funnel(journeys)
    funnel_lines = sum(sum(v.values()) for v in funnel_truth.values())
    incident = gen.incident(incident_n)
    gen.background(max(0, spec.lines - malformed_n - incident_n - funnel_lines))

    logs = Path(out_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    start = datetime.fromtimestamp(gen.t0, UTC)
    reasons: Counter[str] = Counter()
    files = []
    kinds = list(MALFORMED_KINDS)
    keys = sorted(gen.rows)
    # malformed lines go to random files, in proportion to their size
    weights = [len(gen.rows[k]) for k in keys]
    bad: dict[tuple[str, int], int] = Counter(r.choices(keys, weights, k=malformed_n))
    valid_total = crlf_total = 0
    for key in keys:
        category, day = key
        rows = sorted(gen.rows[key], key=lambda row: row[0])
        lines = [line + b"\r" if r.random() < CRLF_SHARE else line for _, line in rows]
        crlf_total += sum(1 for line in lines if line.endswith(b"\r"))
        valid_total += len(lines)
        for _ in range(bad.get(key, 0)):
            kind = r.choice(kinds)
            reasons[MALFORMED_KINDS[kind]] += 1
            lines.insert(r.randint(0, len(lines)), gen.malformed(kind, gen.area(), rows[0][0]))
        data = b"\n".join(lines) + b"\n"
        name = file_name(category, day, spec, start)
        path = logs / name
        if name.endswith(".gz"):
            with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as f:
                f.write(data)
        elif name.endswith(".bz2"):
            path.write_bytes(bz2.compress(data))
        else:
            path.write_bytes(data)
        files.append({"name": name, "category": _camel(category), "lines": len(lines)})

    manifest = {
        "spec": spec.__dict__,
        "generator": GENERATOR_VERSION,
        "lines": valid_total + malformed_n,
        "valid_lines": valid_total,
        "crlf_lines": crlf_total,
        "malformed_lines": malformed_n,
        "dead_letter_reasons": dict(sorted(reasons.items())),
        "categories": _category_counts(gen.rows),
        "files": files,
        "incident": incident,
        "funnel": {
            "steps": [
                {"name": "visit", "category": "click", "where": {"action": "visit"}},
                {"name": "cart", "category": "click", "where": {"action": "cart"}},
                {"name": "pay", "category": "payment", "where": {"type": "OK"}},
            ],
            "user_field": "uid",
            "window": "1d",
            "rates": {a: {"cart_per_visit": c, "pay_per_cart": p} for a, (c, p) in FUNNEL_RATES.items()},
            "per_area": funnel_truth,
        },
    }
    (Path(out_dir) / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    return manifest


def _camel(category: str) -> str:
    head, *rest = category.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _category_counts(rows: dict[tuple[str, int], list[Any]]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for (category, _), lines in rows.items():
        counts[_camel(category)] += len(lines)
    return dict(sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.generate", description=__doc__.split("\n\n")[1],
                                     allow_abbrev=False)
    parser.add_argument("--output", required=True, metavar="DIR")
    parser.add_argument("--lines", type=int, default=Spec.lines)
    parser.add_argument("--days", type=int, default=Spec.days)
    parser.add_argument("--users", type=int, default=Spec.users)
    parser.add_argument("--seed", type=int, default=Spec.seed)
    parser.add_argument("--start", default=Spec.start, help="first day, YYYY-MM-DD (UTC)")
    parser.add_argument("--compression", choices=("mixed", "gz", "bz2", "none"), default=Spec.compression)
    args = parser.parse_args(argv)
    if args.lines < 1000 or args.days < 1 or args.users < 10:
        parser.error("need --lines >= 1000, --days >= 1 and --users >= 10")
    try:
        datetime.fromisoformat(args.start)
    except ValueError:
        parser.error(f"--start {args.start!r} is not a date like 2014-01-17")
    spec = Spec(args.lines, args.days, args.users, args.seed, args.start, args.compression)
    manifest = generate(args.output, spec)
    inc = manifest["incident"]
    print(
        f"generated {manifest['lines']:,} lines in {len(manifest['files'])} files under {args.output}/logs "
        f"({manifest['malformed_lines']:,} malformed); incident: {inc['lines']} errors in {inc['area']} "
        f"at {inc['start']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
