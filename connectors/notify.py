"""Alarm notifiers: console (coloured, with the terminal bell), email over SMTP (batched per severity pool,
quiet hours, a minimum interval between mails), webhook (JSON POST, retried). Alarms always go to `alarms/`
as well; a notifier that fails logs and counts the failure, it never stops the pipeline or loses the alarm.
"""

from __future__ import annotations

import logging
import random
import smtplib
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from typing import Any
from zoneinfo import ZoneInfo

import apache_beam as beam
import orjson
from apache_beam.metrics import Metrics

log = logging.getLogger("dpipe.notify")

COLOURS = {1: "\033[36m", 2: "\033[32m", 3: "\033[33m", 4: "\033[31m", 5: "\033[1;31m"}
RESET = "\033[0m"


def alarm_line(alarm: dict[str, Any], colour: bool = True) -> str:
    """One console line: severity, rule, key, window, value against the condition."""
    key = " ".join(f"{k}={v}" for k, v in alarm["key"].items()) or "-"
    cond = (f"{alarm['op']} {alarm['threshold']:g}" if "threshold" in alarm
            else f"+{alarm['change_percent']:g}% over {alarm['previous']:g}")
    text = (f"ALARM sev{alarm['severity']} {alarm['rule']} [{key}] {alarm['window']['start']}.."
            f"{alarm['window']['end']}: {alarm['aggregate']} = {alarm['value']:g} ({cond})")
    return f"{COLOURS.get(alarm['severity'], '')}{text}{RESET}" if colour else text


@dataclass(frozen=True)
class ConsoleSettings:
    beep_severity: int = 4  # ring the terminal bell at or above this severity
    colour: bool = True


@dataclass(frozen=True)
class WebhookSettings:
    url: str
    timeout: float = 10.0
    max_retries: int = 4
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class EmailSettings:
    host: str
    port: int = 25
    sender: str = "dpipe@localhost"
    to: tuple[str, ...] = ()
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    ssl: bool = False
    pools: tuple[tuple[int, int], ...] = ((4, 5), (1, 3))  # severity ranges, one mail per pool
    min_interval_s: float = 300.0  # between two mails of one pool
    quiet_hours: tuple[int, int] | None = None  # [from, to) local hours: only `urgent_severity` is mailed
    urgent_severity: int = 5
    timezone: str = "UTC"


@dataclass
class Notifiers:
    console: ConsoleSettings | None = None
    webhook: WebhookSettings | None = None
    email: EmailSettings | None = None
    clock: Any = field(default=time.time, repr=False)


def post_webhook(settings: WebhookSettings, alarm: dict[str, Any], sleep: Any = time.sleep) -> bool:
    """POST the alarm as JSON; 5xx, 429 and connection errors are retried with backoff."""
    body = orjson.dumps(alarm)
    for attempt in range(settings.max_retries + 1):
        if attempt:
            sleep(random.uniform(0, min(10.0, 0.2 * 2**attempt)))
        req = urllib.request.Request(settings.url, body, method="POST",
                                     headers={"content-type": "application/json", **dict(settings.headers)})
        try:
            with urllib.request.urlopen(req, timeout=settings.timeout) as answer:
                if 200 <= answer.status < 300:
                    return True
        except urllib.error.HTTPError as err:
            if err.code < 500 and err.code != 429:
                log.error("webhook %s refused alarm %s: %s", settings.url, alarm["rule"], err)
                return False
        except OSError as err:
            log.warning("webhook %s: %s (attempt %d)", settings.url, err, attempt + 1)
    return False


class Mailer:
    """Batches alarms per severity pool; sends a pool's batch when its minimum interval has passed."""

    def __init__(self, settings: EmailSettings, clock: Any = time.time) -> None:
        self.s, self.clock = settings, clock
        self.pending: dict[tuple[int, int], list[dict[str, Any]]] = {}
        self.last_sent: dict[tuple[int, int], float] = {}
        self.quiet_skipped = 0

    def add(self, alarm: dict[str, Any]) -> None:
        sev = alarm["severity"]
        if self._quiet() and sev < self.s.urgent_severity:
            self.quiet_skipped += 1
            return
        for pool in self.s.pools:
            if pool[0] <= sev <= pool[1]:
                self.pending.setdefault(pool, []).append(alarm)
                return

    def flush(self, force: bool = False) -> int:
        """Send what is due (everything when `force`); returns the number of mails sent."""
        sent = 0
        now = self.clock()
        for pool, alarms in list(self.pending.items()):
            if not alarms or (not force and now - self.last_sent.get(pool, -1e18) < self.s.min_interval_s):
                continue
            self._send(pool, alarms)
            self.last_sent[pool] = now
            self.pending[pool] = []
            sent += 1
        return sent

    def _quiet(self) -> bool:
        if not self.s.quiet_hours:
            return False
        hour = datetime.fromtimestamp(self.clock(), ZoneInfo(self.s.timezone)).hour
        start, end = self.s.quiet_hours
        return start <= hour < end if start < end else hour >= start or hour < end

    def _send(self, pool: tuple[int, int], alarms: list[dict[str, Any]]) -> None:
        msg = EmailMessage()
        worst = max(a["severity"] for a in alarms)
        msg["Subject"] = f"[dpipe] {len(alarms)} alarm(s), severity up to {worst}: " + ", ".join(
            sorted({a["rule"] for a in alarms}))
        msg["From"] = self.s.sender
        msg["To"] = ", ".join(self.s.to)
        lines = [alarm_line(a, colour=False) for a in alarms]
        samples = [f"  {s}" for a in alarms for s in a.get("samples", [])[:3]]
        msg.set_content("\n".join(lines) + "\n\nsamples:\n" + "\n".join(samples) + "\n")
        s = self.s
        smtp_class = smtplib.SMTP_SSL if s.ssl else smtplib.SMTP
        with smtp_class(s.host, s.port, timeout=30) as smtp:
            if s.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if s.username:
                smtp.login(s.username, s.password or "")
            smtp.send_message(msg)


class _NotifyDoFn(beam.DoFn):
    def __init__(self, notifiers: Notifiers) -> None:
        self._n = notifiers
        self._failed = Metrics.counter("dpipe.alarms", "notify_failures")
        self._fired = Metrics.counter("dpipe.alarms", "fired")

    def setup(self) -> None:
        self._mailer = Mailer(self._n.email, self._n.clock) if self._n.email else None

    def process(self, alarm: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if alarm.get("revision", 0):  # a correction of a row already notified (late lines): stored, not sent
            yield alarm
            return
        self._fired.inc()
        console = self._n.console
        if console:
            bell = "\a" if alarm["severity"] >= console.beep_severity else ""
            print(bell + alarm_line(alarm, console.colour), file=sys.stdout, flush=True)
        if self._n.webhook and not post_webhook(self._n.webhook, alarm):
            self._failed.inc()
        if self._mailer:
            self._mailer.add(alarm)
            self._send(force=False)
        yield alarm

    def finish_bundle(self) -> None:
        if self._mailer:
            self._send(force=False)

    def teardown(self) -> None:
        if getattr(self, "_mailer", None):
            self._send(force=True)  # what the minimum interval still held back

    def _send(self, force: bool) -> None:
        try:
            self._mailer.flush(force)
        except (OSError, smtplib.SMTPException) as err:
            self._failed.inc()
            log.error("alarm mail not sent: %s", err)


class Notify(beam.PTransform):
    """Alarms -> the configured notifiers; passes the alarms on (to `alarms/`)."""

    def __init__(self, notifiers: Notifiers) -> None:
        super().__init__()
        self._notifiers = notifiers

    def expand(self, alarms: beam.PCollection) -> beam.PCollection:
        return alarms | "Notify" >> beam.ParDo(_NotifyDoFn(self._notifiers))
