"""GeoIP lookups over a MaxMind DB: one reader per worker process, cached, swapped atomically on change.

Lookups go through `maxminddb` (the reader geoip2 is built on) and read only the few fields dpipe keeps:
geoip2's model objects cost twice as much per lookup. Addresses repeat (a user keeps an address), so an LRU
cache in front of the reader makes a lookup a dict hit: a miss decodes the whole record (every language's
names), about 7 us here, a hit 0.1 us. Equal answers are kept once, so an entry costs about 115 bytes: the
default 262,144 entries (about 30 MB per worker) hold the addresses of a quarter of a million users. The
default database is the GeoLite2-City shipped by PyPI's `maxminddb-geolite2` (July 2018), so demos and tests
run offline; give a current one with `db:`."""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import maxminddb

log = logging.getLogger("dpipe.geoip")

PRIVATE = "private"
MALFORMED = "malformed"
NOT_FOUND = "not_found"

Geo = tuple[str | None, str | None, float | None, float | None]  # country, city, lat, lon


def default_db() -> str:
    from _maxminddb_geolite2 import geolite2_database

    return geolite2_database()


@dataclass(frozen=True)
class _Loaded:
    reader: Any
    stamp: tuple[float, int]
    build_epoch: int
    lookup: Any  # the cached lookup bound to this reader


DEFAULT_CACHE_SIZE = 262_144


def _open(path: str, cache_size: int = DEFAULT_CACHE_SIZE) -> _Loaded:
    st = os.stat(path)
    reader = maxminddb.open_database(path, maxminddb.MODE_AUTO)
    answers: dict[Geo, Geo] = {}  # one tuple per distinct answer: many addresses share a city

    @functools.lru_cache(maxsize=cache_size)
    def lookup(ip: str) -> Geo | str:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return MALFORMED
        if not addr.is_global or addr.is_multicast:
            return PRIVATE
        rec: Any = reader.get(ip)  # a City or Country record: nested dicts
        if not rec:
            return NOT_FOUND
        country = (rec.get("country") or rec.get("registered_country") or {}).get("iso_code")
        city = ((rec.get("city") or {}).get("names") or {}).get("en")
        loc = rec.get("location") or {}
        geo = country, city, loc.get("latitude"), loc.get("longitude")
        if len(answers) >= cache_size:  # more cities than cache entries: a bound all the same
            answers.clear()
        return answers.setdefault(geo, geo)

    return _Loaded(reader, (st.st_mtime, st.st_size), int(reader.metadata().build_epoch), lookup)


class GeoDb:
    """A database file, reopened when it changes (checked at most every `check_seconds`).

    The new reader is opened first and swapped in with one reference assignment, so lookups in flight keep
    the old one; a file that fails to open is logged and the old reader stays in service.
    """

    _registry: dict[tuple[str, float, int], GeoDb] = {}
    _lock = threading.Lock()

    def __init__(self, path: str, check_seconds: float = 60.0, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        self.path = path
        self.check_seconds = check_seconds
        self.cache_size = cache_size
        self._loaded = _open(path, cache_size)
        self._checked = time.monotonic()
        self.reload_failures = 0

    @classmethod
    def shared(cls, path: str, check_seconds: float = 60.0, cache_size: int = DEFAULT_CACHE_SIZE) -> GeoDb:
        """One GeoDb per file and process, whichever DoFns ask for it."""
        with cls._lock:
            key = (path, check_seconds, cache_size)
            db = cls._registry.get(key)
            if db is None:
                db = cls._registry[key] = cls(path, check_seconds, cache_size)
            return db

    @property
    def build_epoch(self) -> int:
        return self._loaded.build_epoch

    def lookup(self, ip: str) -> Geo | str:
        """(country, city, lat, lon), or why there is none: 'private', 'malformed' or 'not_found'."""
        if time.monotonic() - self._checked >= self.check_seconds:
            self.maybe_reload()
        return self._loaded.lookup(ip)

    def maybe_reload(self) -> bool:
        """Swap in the file's new contents if it changed; True when it did."""
        self._checked = time.monotonic()
        try:
            st = os.stat(self.path)
            if (st.st_mtime, st.st_size) == self._loaded.stamp:
                return False
            self._loaded = _open(self.path, self.cache_size)
        except (OSError, maxminddb.InvalidDatabaseError) as err:
            self.reload_failures += 1
            log.error("geoip: keeping the current database, cannot reopen %s: %s", self.path, err)
            return False
        log.info("geoip: reloaded %s (built %s)", self.path, time.strftime("%Y-%m-%d", time.gmtime(self.build_epoch)))
        return True
