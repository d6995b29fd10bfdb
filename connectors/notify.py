"""Alarm notifiers: console (coloured, with the terminal bell), email over SMTP (batched per severity pool,
quiet hours, a minimum interval between mails, held-back mail sent by timers: see `_MailDoFn`), webhook (JSON
POST, retried). Alarms always go to `alarms/` as well; a notifier that fails logs and counts the failure, it
never stops the pipeline or loses the alarm.
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
from apache_beam.coders import FloatCoder, PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp

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


def mail_pool(settings: EmailSettings, severity: int) -> str | None:
    """The severity pool an alarm is mailed with (`"4-5"`), or None when no pool takes its severity."""
    return next((f"{low}-{high}" for low, high in settings.pools if low <= severity <= high), None)


def quiet(settings: EmailSettings, now: float) -> bool:
    """Within the quiet hours [from, to) of the settings' time zone (to < from: across midnight)."""
    if not settings.quiet_hours:
        return False
    hour = datetime.fromtimestamp(now, ZoneInfo(settings.timezone)).hour
    start, end = settings.quiet_hours
    return start <= hour < end if start < end else hour >= start or hour < end


def send_mail(settings: EmailSettings, alarms: list[dict[str, Any]]) -> None:
    """One mail with every alarm of a pool: subject with the count and the worst severity, a line per alarm,
    then their sample lines."""
    msg = EmailMessage()
    worst = max(a["severity"] for a in alarms)
    msg["Subject"] = f"[dpipe] {len(alarms)} alarm(s), severity up to {worst}: " + ", ".join(
        sorted({a["rule"] for a in alarms}))
    msg["From"] = settings.sender
    msg["To"] = ", ".join(settings.to)
    lines = [alarm_line(a, colour=False) for a in alarms]
    samples = [f"  {s}" for a in alarms for s in a.get("samples", [])[:3]]
    msg.set_content("\n".join(lines) + "\n\nsamples:\n" + "\n".join(samples) + "\n")
    smtp_class = smtplib.SMTP_SSL if settings.ssl else smtplib.SMTP
    with smtp_class(settings.host, settings.port, timeout=30) as smtp:
        if settings.starttls:
            smtp.starttls(context=ssl.create_default_context())
        if settings.username:
            smtp.login(settings.username, settings.password or "")
        smtp.send_message(msg)


def first_firing(alarm: dict[str, Any]) -> bool:
    """What is notified: an alarm's first firing, not a later revision of its row (late lines: stored only)."""
    return not alarm.get("revision", 0)


def pooled(alarm: dict[str, Any], settings: EmailSettings) -> list[tuple[str, dict[str, Any]]]:
    """(its severity pool, the alarm) for an alarm to mail; nothing for a revision or a severity no pool takes."""
    pool = mail_pool(settings, alarm["severity"]) if first_firing(alarm) else None
    return [(pool, alarm)] if pool else []


class _NotifyDoFn(beam.DoFn):
    """Console and webhook, at once for each alarm; passes every alarm on (to `alarms/`)."""

    def __init__(self, notifiers: Notifiers) -> None:
        self._n = notifiers
        self._failed = Metrics.counter("dpipe.alarms", "notify_failures")
        self._fired = Metrics.counter("dpipe.alarms", "fired")

    def process(self, alarm: dict[str, Any]) -> Iterator[dict[str, Any]]:
        if first_firing(alarm):
            self._fired.inc()
            console = self._n.console
            if console:
                bell = "\a" if alarm["severity"] >= console.beep_severity else ""
                print(bell + alarm_line(alarm, console.colour), file=sys.stdout, flush=True)
            if self._n.webhook and not post_webhook(self._n.webhook, alarm):
                self._failed.inc()
        yield alarm


_HELD_SPEC = BagStateSpec("held", PickleCoder())
_LAST_SENT_SPEC = ReadModifyWriteStateSpec("last_sent", FloatCoder())
_DUE_SPEC = TimerSpec("due", TimeDomain.REAL_TIME)
_END_SPEC = TimerSpec("end", TimeDomain.WATERMARK)
HELD, LAST_SENT = beam.DoFn.StateParam(_HELD_SPEC), beam.DoFn.StateParam(_LAST_SENT_SPEC)
DUE, END = beam.DoFn.TimerParam(_DUE_SPEC), beam.DoFn.TimerParam(_END_SPEC)


class _MailDoFn(beam.DoFn):
    """Mail per severity pool (the key), in the global window: an alarm goes out at once when its pool's last
    mail is `min_interval` old, else it is held in state and sent with the others of its pool by a timer,
    which Beam fires whatever the bundles: a processing-time timer when the interval has passed (a stream),
    and an event-time timer at the end of the global window, which fires once the input is done (the end of
    a bounded run, a stream's drain), so no held mail is left behind when the pipeline ends. During quiet
    hours alarms below `urgent_severity` are not mailed (counted: `dpipe.alarms/mail_quiet_skipped`)."""

    def __init__(self, settings: EmailSettings, clock: Any = time.time) -> None:
        self._s, self._clock = settings, clock
        self._failed = Metrics.counter("dpipe.alarms", "notify_failures")
        self._quiet = Metrics.counter("dpipe.alarms", "mail_quiet_skipped")
        self._mails = Metrics.counter("dpipe.alarms", "mails_sent")

    def process(self, pool_alarm: tuple[str, dict[str, Any]], held: Any = HELD, last_sent: Any = LAST_SENT,
                due: Any = DUE, end: Any = END) -> None:
        alarm, now = pool_alarm[1], self._clock()
        if alarm["severity"] < self._s.urgent_severity and quiet(self._s, now):
            self._quiet.inc()
            return
        held.add(alarm)
        previous = last_sent.read()
        if previous is None or now - previous >= self._s.min_interval_s:
            self._flush(held, last_sent)
            return
        due.set(Timestamp.of(previous + self._s.min_interval_s))
        end.set(GlobalWindow().max_timestamp())

    @on_timer(_DUE_SPEC)
    def interval_passed(self, held: Any = HELD, last_sent: Any = LAST_SENT) -> None:
        self._flush(held, last_sent)

    @on_timer(_END_SPEC)
    def input_done(self, held: Any = HELD, last_sent: Any = LAST_SENT) -> None:
        self._flush(held, last_sent)

    def _flush(self, held: Any, last_sent: Any) -> None:
        """Send what the pool holds as one mail; a mail that cannot be sent is logged and counted (the alarms
        are in `alarms/`), not retried."""
        alarms = list(held.read())
        if not alarms:  # a timer of a pool already flushed
            return
        held.clear()
        last_sent.write(self._clock())
        try:
            send_mail(self._s, alarms)
        except (OSError, smtplib.SMTPException) as err:
            self._failed.inc()
            log.error("alarm mail not sent: %s", err)
            return
        self._mails.inc()


class Notify(beam.PTransform):
    """Alarms -> the configured notifiers; passes the alarms on (to `alarms/`)."""

    def __init__(self, notifiers: Notifiers) -> None:
        super().__init__()
        self._notifiers = notifiers

    def expand(self, alarms: beam.PCollection) -> beam.PCollection:
        email = self._notifiers.email
        if email:
            _ = (alarms
                 | "MailPool" >> beam.FlatMap(pooled, email).with_output_types(tuple[str, Any])
                 | "MailWindow" >> beam.WindowInto(window.GlobalWindows())
                 | "Mail" >> beam.ParDo(_MailDoFn(email, self._notifiers.clock)))
        return alarms | "Notify" >> beam.ParDo(_NotifyDoFn(self._notifiers))
