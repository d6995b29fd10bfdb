"""The dashboard in a real browser: Debian's headless Chromium, driven by its chromedriver through Selenium.

A backfill of the generated sample writes report.html: opened from file:// (offline), every page draws its
charts, and their numbers are the outputs' (dead-letter reasons = summary.json, funnel steps = funnels/).
A running stream's live dashboard updates after lines are POSTed to its gateway. Screenshots go to the test's
folder.
"""

from __future__ import annotations

import http.client
import shutil
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from selenium import webdriver
from selenium.webdriver.support.ui import WebDriverWait

from pipelines import backfill
from pipelines.funnel import read_results
from tests.conftest import PINNED
from tests.servers import LocalServer, free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PAGES = ("overview", "alarms", "counters", "cardinality", "statistics", "funnels")


def answers(url: str) -> None:
    with urllib.request.urlopen(url, timeout=5) as answer:
        answer.read()


class ChromeDriver(LocalServer):
    """Debian's chromedriver (`make browser` installs it with chromium) on a free port."""

    name = "chromedriver"

    def command(self) -> list[str]:
        return [shutil.which("chromedriver") or "/usr/bin/chromedriver", f"--port={self.port}"]

    def probe(self) -> None:
        answers(f"http://127.0.0.1:{self.port}/status")


class DashboardServer(LocalServer):
    """`python -m pipelines.dashboard` over an output folder."""

    name = "dashboard"

    def __init__(self, output: Path) -> None:
        super().__init__()
        self.output = output

    def command(self) -> list[str]:
        return [sys.executable, "-m", "pipelines.dashboard", "--output", str(self.output), "--port", str(self.port)]

    def probe(self) -> None:
        answers(f"http://127.0.0.1:{self.port}/healthz")


class StreamServer(DashboardServer):
    """`python -m pipelines.stream` on Prism with its gateway and `--dashboard_port`."""

    name = "stream"

    def __init__(self, output: Path) -> None:
        super().__init__(output)
        self.gateway_port = free_port()

    def command(self) -> list[str]:
        return [sys.executable, "-m", "pipelines.stream", "--output", str(self.output), "--spool",
                str(self.output.parent / "spool"), "--port", str(self.gateway_port),
                "--dashboard_port", str(self.port)]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Remote]:
    driver_server = ChromeDriver()
    driver_server.start(tmp_path_factory.mktemp("chromedriver") / "chromedriver.log")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Remote(command_executor=f"http://127.0.0.1:{driver_server.port}", options=options)
    try:
        yield driver
    finally:
        driver.quit()
        driver_server.stop()


@pytest.fixture(scope="module")
def backfilled(sample, tmp_path_factory: pytest.TempPathFactory) -> Path:
    logs, _ = sample
    out = tmp_path_factory.mktemp("backfill") / "out"
    code = backfill.main(["--config", str(ROOT / "templates/jobs/engine.als.yaml"), "--input", f"{logs}/*",
                          "--output", str(out), *PINNED])
    assert code == 0
    return out


def open_page(driver: webdriver.Remote, url: str, page: str) -> None:
    driver.get(f"{url}#{page}")
    WebDriverWait(driver, 30).until(
        lambda d: d.execute_script("return document.getElementById('page').dataset.page") == page)


def chart_data(driver: webdriver.Remote, chart: str) -> dict[str, Any] | None:
    """The data a chart is drawing (labels, datasets' labels and values), or None while it is not drawn."""
    return driver.execute_script("""
        const canvas = document.querySelector(`canvas[data-chart="${arguments[0]}"]`);
        const chart = canvas && Chart.getChart(canvas);
        return chart ? {labels: chart.data.labels,
                        datasets: chart.data.datasets.map(d => ({label: d.label, data: d.data}))} : null;
    """, chart)


def drawn_charts(driver: webdriver.Remote) -> list[str]:
    """The charts on the page that have data and a size on screen."""
    return driver.execute_script("""
        return [...document.querySelectorAll('canvas[data-chart]')].filter(c => {
            const chart = Chart.getChart(c);
            return chart && c.width > 0 && chart.data.datasets.some(d => d.data.length > 0);
        }).map(c => c.dataset.chart);
    """)


def card(driver: webdriver.Remote, name: str) -> str:
    return driver.execute_script(
        "const c = document.querySelector(`[data-card='${arguments[0]}'] .value`); return c && c.textContent;", name)


def test_the_backfill_report_opens_offline_and_draws_the_outputs(browser, backfilled: Path, tmp_path: Path) -> None:
    report = backfilled / "report.html"
    summary = orjson.loads((backfilled / "summary.json").read_bytes())
    url = report.as_uri()

    for page in PAGES:
        open_page(browser, url, page)
        charts = WebDriverWait(browser, 30).until(lambda d: drawn_charts(d))
        assert charts, f"{page}: no chart drawn"
        browser.save_screenshot(str(tmp_path / f"report-{page}.png"))

    open_page(browser, url, "overview")
    reasons = sorted(summary["dead_letter_reasons"].items(), key=lambda kv: (-kv[1], kv[0]))
    drawn = chart_data(browser, "dead_letters")
    assert drawn["labels"] == [r for r, _ in reasons]
    assert drawn["datasets"][0]["data"] == [n for _, n in reasons]
    assert card(browser, "events") == f"{summary['events']:,}"
    assert card(browser, "lines_read") == f"{summary['lines_read']:,}"

    open_page(browser, url, "funnels")
    funnels = read_results(str(backfilled))
    for start in {f["start"] for f in funnels}:
        rows = sorted((f for f in funnels if f["start"] == start), key=lambda f: f["dimensions"]["area"])
        drawn = chart_data(browser, f"funnel:payment:{start}")
        assert drawn["labels"] == [f"area={f['dimensions']['area']}" for f in rows]
        steps = [s["step"] for s in rows[0]["steps"]]
        assert [d["label"] for d in drawn["datasets"]] == steps
        for i, dataset in enumerate(drawn["datasets"]):
            assert dataset["data"] == [f["steps"][i]["users"] for f in rows]


def test_the_dashboard_command_serves_the_same_pages_live(browser, backfilled: Path, tmp_path: Path) -> None:
    with DashboardServer(backfilled) as server:
        server.start(tmp_path / "dashboard.log")
        open_page(browser, f"http://127.0.0.1:{server.port}/", "alarms")
        WebDriverWait(browser, 30).until(lambda d: chart_data(d, "alarms_per_rule"))
        rules = {orjson.loads(line)["rule"] for f in (backfilled / "alarms").glob("*.jsonl")
                 for line in f.read_bytes().splitlines()}
        assert chart_data(browser, "alarms_per_rule")["labels"] == sorted(rules)
        first = int(browser.execute_script("return document.body.dataset.generated"))
        WebDriverWait(browser, 30).until(
            lambda d: int(d.execute_script("return document.body.dataset.generated")) > first)
        assert "live" in browser.find_element("id", "meta").text


def post(port: int, category: str, lines: list[bytes]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", f"/v1/logs/{category}", b"\n".join(lines))
    status = conn.getresponse().status
    conn.close()
    return status


def test_the_live_stream_dashboard_updates_after_lines_are_posted(browser, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with StreamServer(out) as stream:
        stream.start(tmp_path / "stream.log", timeout=120)
        url = f"http://127.0.0.1:{stream.port}/"
        open_page(browser, url, "overview")
        WebDriverWait(browser, 30).until(lambda d: card(d, "state") == "RUNNING")
        assert card(browser, "events") == "0"

        now = int(time.time() * 1000)
        lines = [b'fr,%d,{"n":%d}' % (now, n) for n in range(150)] + [b"not a line"] * 3
        assert post(stream.gateway_port, "pv", lines) == 200
        WebDriverWait(browser, 90).until(lambda d: card(d, "events") == "150")
        WebDriverWait(browser, 30).until(lambda d: card(d, "dead_letters") == "3")
        assert card(browser, "lines_in") == "153"
        assert chart_data(browser, "dead_letters")["labels"] == ["not 3 fields"]
        browser.save_screenshot(str(tmp_path / "live-overview.png"))

        with urllib.request.urlopen(url + "status", timeout=10) as answer:
            status = orjson.loads(answer.read())
        assert status["state"] == "RUNNING" and status["lines_in"] == 153 and status["healthy"]
        assert status["sinks"]["events"] == 150 and status["dead_letters"] == {"not 3 fields": 3}
        assert status["inputs"][0]["unread_bytes"] == 0  # every line is archived: all of them were read
        # Beam's own counters and the source's watermark gauges, read from the runner while the job runs
        metrics = WebDriverWait(browser, 60, poll_frequency=0.5).until(lambda _: scraped(
            url, "dpipe_parse_events_total 150.0", "dpipe_input_watermark_ms_pv "))
        assert 'dpipe_sink_rows_total{sink="events"} 150.0' in metrics
        assert 'dpipe_job_state{runner="PrismRunner",state="RUNNING"} 1.0' in metrics
        assert 'dpipe_watermark_lag_seconds{input="spool"}' in metrics
        assert 'dpipe_spool_unread_bytes{input="spool"} 0.0' in metrics
        WebDriverWait(browser, 30).until(lambda d: card(d, "watermark_lag") not in ("n/a", None))


def scraped(url: str, *lines: str) -> str | None:
    """The dashboard's /metrics once it has every one of `lines`."""
    with urllib.request.urlopen(url + "metrics", timeout=10) as answer:
        text = answer.read().decode()
    return text if all(line in text for line in lines) else None
