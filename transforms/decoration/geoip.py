"""`geoip`: `_cntry` and, where the DB has them, `_city`, `_lat`, `_lon`; private, reserved and malformed
addresses get nothing but a counter. The first key present wins."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import pyarrow as pa
from apache_beam.metrics import Metrics
from pydantic import Field

from pipelines.validation import Duration, existing_file
from transforms.decoration.base import Op, OpSection, decorations
from transforms.event import MISSING, Event
from transforms.fields import Keys, compile_getter
from transforms.geoip import DEFAULT_CACHE_SIZE, GeoDb, default_db


class GeoIpOp(Op):
    name = "geoip"

    def __init__(self, keys: Sequence[str], db: str, fields: Sequence[str] = ("country", "city", "location"),
                 max_db_age_s: float | None = None, check_seconds: float = 60.0,
                 cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.getters = [compile_getter(k) for k in keys]
        self.db_path, self.check_seconds, self.cache_size = db, check_seconds, cache_size
        self.want_city, self.want_location = "city" in fields, "location" in fields
        self.max_db_age_s = max_db_age_s
        self._db: GeoDb | None = None
        self._stale_at = -1.0
        self._stale = False

    @property
    def db(self) -> GeoDb:
        if self._db is None:  # opened lazily: once per worker process, not when the pipeline is built
            self._db = GeoDb.shared(self.db_path, self.check_seconds, self.cache_size)
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

    def setup(self) -> None:
        Metrics.gauge("dpipe.geoip", "db_build_epoch").set(self.db.build_epoch)

    def columns(self) -> list[tuple[str, pa.DataType]]:
        cols = [("_cntry", pa.string())]
        if self.want_city:
            cols.append(("_city", pa.string()))
        if self.want_location:
            cols += [("_lat", pa.float64()), ("_lon", pa.float64())]
        if self.max_db_age_s is not None:
            cols.append(("_tags", pa.list_(pa.string())))
        return cols


class GeoIpConfig(OpSection):
    keys: Keys = ["ip", "_log_info.ip"]
    db: Annotated[str | None, existing_file("GeoIP database file")] = None
    fields: list[Literal["country", "city", "location"]] = ["country", "city", "location"]
    max_db_age: Duration | None = None
    check_interval: Duration = 60.0
    cache_size: Annotated[int, Field(ge=1)] = DEFAULT_CACHE_SIZE  # addresses remembered per worker (~115 B each)

    def build(self) -> Op:
        return GeoIpOp(self.keys, self.db or default_db(), self.fields, self.max_db_age, self.check_interval,
                       self.cache_size)
