"""The HTTP gateway, a service of its own: `api` (the HTTP semantics over a LineSink), `server` (served with
aiohttp), `settings` (its config section, with units), `spool` (the durable segment files it writes and the
stream source reads), `pubsub` (the other LineSink: a Pub/Sub topic) and `service` (serving it in a loop or
a thread of one's own). `python -m pipelines.gateway` runs it."""
