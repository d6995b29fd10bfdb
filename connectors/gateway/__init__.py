"""The HTTP gateway, a service of its own: `server` (the HTTP API over a LineSink) and `spool` (the durable
segment files it writes and the stream source reads). `python -m pipelines.gateway` runs it."""
