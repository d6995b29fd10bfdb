"""The dashboard page as one HTML file: Chart.js, the page data and the app inlined, so that a report opens
offline from file:// and can be mailed or archived on its own."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

from pipelines.validation import UserError

HERE = Path(__file__).resolve().parent
CHART_JS = HERE / "static" / "chart.umd.min.js"
REPORT_FILE = "report.html"


class MissingChartLibrary(UserError, RuntimeError):
    """Chart.js is fetched from npm by `make setup`; without it there is no page to draw."""


def _json(value: Any) -> str:
    """JSON that is safe inside a <script> element (no `</script>`, no `<!--`)."""
    return orjson.dumps(value).decode().replace("<", "\\u003c")


def chart_library() -> str:
    if not CHART_JS.is_file():
        raise MissingChartLibrary(f"{CHART_JS} is missing: run `make setup` (fetches Chart.js from npm)")
    return CHART_JS.read_text(encoding="utf-8")


def render_page(data: dict[str, Any] | None, live: dict[str, Any] | None = None) -> str:
    """The page; `live` ({"url", "every_s"}) makes it poll that URL for fresh page data."""
    template = (HERE / "page.html").read_text(encoding="utf-8")
    parts = {"/*CHART_JS*/": chart_library().replace("</script", "<\\/script"), "/*DATA*/": _json(data),
             "/*LIVE*/": _json(live), "/*APP_JS*/": (HERE / "app.js").read_text(encoding="utf-8")}
    return re.sub(r"/\*(CHART_JS|DATA|LIVE|APP_JS)\*/", lambda m: parts[m.group(0)], template)


def write_report(output: str | Path, data: dict[str, Any]) -> Path:
    """`output/report.html` from the page data; returns its path."""
    path = Path(output) / REPORT_FILE
    tmp = path.with_name(f".{REPORT_FILE}.tmp")
    tmp.write_text(render_page(data), encoding="utf-8")
    tmp.replace(path)
    return path.resolve()
