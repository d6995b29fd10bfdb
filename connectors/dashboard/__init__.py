"""dpipe's dashboard: page data from an output folder (data), one HTML page (render), the live server and
admin API (server, status). Entry points: `pipelines.dashboard`, `server.serve_in_thread` beside a stream,
and `render.write_report` after every backfill. Import the module you need: a backfill's report does not
load the server's HTTP stack (part of its start-up cost, issue 17)."""
