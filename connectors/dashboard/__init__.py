"""dpipe's dashboard: page data from an output folder (data), one HTML page (render), the live server and
admin API (server, status). Entry points: `pipelines.dashboard`, `serve_in_thread` beside a stream, and
`write_report` after every backfill."""

from connectors.dashboard.render import MissingChartLibrary, write_report
from connectors.dashboard.server import DashboardThread, serve_in_thread
from connectors.dashboard.status import StreamStatus

__all__ = ["DashboardThread", "MissingChartLibrary", "StreamStatus", "serve_in_thread", "write_report"]
