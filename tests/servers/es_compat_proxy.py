"""TEST-ONLY compatibility shim: lets the official ``elasticsearch`` 9.x Python client talk to OpenSearch.

Never use it outside tests. It is a small HTTP proxy on 127.0.0.1 (a free port, in a background
thread) in front of an OpenSearch URL, doing only what the ES 9 client needs to accept the server:

* requests: ``Content-Type``/``Accept`` media types ``application/vnd.elasticsearch+json;
  compatible-with=9`` (and ``+x-ndjson``, ...) become plain ``application/json`` /
  ``application/x-ndjson``, which OpenSearch understands;
* responses: ``X-Elastic-Product: Elasticsearch`` is added to every one (without it the client
  raises UnsupportedProductError on the first 2xx answer: elasticsearch/_sync/client/_base.py);
* ``GET /`` answers with ``version.number`` "9.0.0" (the real one is kept as ``version.opensearch_number``
  and ``version.distribution`` stays "opensearch"), for code that looks at the server version.

Everything else (paths, query strings, bodies, status codes, other headers) passes through untouched,
so item-level bulk errors, 429s and so on reach the client exactly as OpenSearch sent them.
Only the Python standard library is used.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ES_VERSION = "9.0.0"
Observer = Callable[[str, str, int, bytes], None]
_COMPAT_RE = re.compile(r"application/vnd\.elasticsearch\+([\w.-]+)\s*(;\s*compatible-with\s*=\s*\d+)?", re.I)
# Not forwarded either way: hop-by-hop headers, and framing that the proxy sets itself.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "host",
}


def plain_media_type(value: str) -> str:
    """'application/vnd.elasticsearch+json; compatible-with=9' -> 'application/json' (any part of a list)."""
    return _COMPAT_RE.sub(lambda m: "application/" + m.group(1), value)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    server: _ProxyServer

    def log_message(self, format: str, *args: object) -> None:  # quiet: tests read their own output
        pass

    def _read_body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    _conn: http.client.HTTPConnection | None = None  # one upstream connection per client connection

    def _upstream(self) -> tuple[http.client.HTTPConnection, bool]:
        reused = self._conn is not None
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.server.target_host, self.server.target_port, timeout=300)
        return self._conn, reused

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _forward(self) -> None:
        body = self._read_body()
        headers = {}
        for key, value in self.headers.items():
            lk = key.lower()
            if lk in _HOP_BY_HOP or lk == "accept-encoding":  # uncompressed answers: GET / may be rewritten
                continue
            headers[key] = plain_media_type(value) if lk in ("content-type", "accept") else value
        headers["Host"] = f"{self.server.target_host}:{self.server.target_port}"
        if body is not None:
            headers["Content-Length"] = str(len(body))

        while True:
            conn, reused = self._upstream()
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (http.client.HTTPException, OSError) as e:
                conn.close()
                self._conn = None
                if reused:  # an idle kept-alive upstream connection was closed: once more on a new one
                    continue
                self._reply(502, [], json.dumps({"error": f"es_compat_proxy: upstream failed: {e}"}).encode())
                return

        if self.server.observe is not None:
            self.server.observe(self.command, self.path, resp.status, data)
        out_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP]
        if self.command == "GET" and urlsplit(self.path).path in ("", "/") and resp.status == 200:
            data = self._rewrite_root(data)
        if self.command == "HEAD":
            length = resp.getheader("Content-Length")
            self._reply(resp.status, out_headers, b"", head_length=length)
        else:
            self._reply(resp.status, out_headers, data)

    @staticmethod
    def _rewrite_root(data: bytes) -> bytes:
        try:
            info = json.loads(data)
            version = info["version"]
        except (ValueError, KeyError, TypeError):
            return data
        version["opensearch_number"] = version.get("number")
        version["number"] = ES_VERSION
        version.setdefault("build_flavor", "default")
        return json.dumps(info).encode()

    def _reply(self, status: int, headers: list[tuple[str, str]], data: bytes, head_length: str | None = None) -> None:
        self.send_response(status)
        for key, value in headers:
            if key.lower() != "x-elastic-product":
                self.send_header(key, value)
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Length", head_length if head_length is not None else str(len(data)))
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _forward


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, target_url: str, observe: Observer | None = None) -> None:
        self.observe = observe
        target = urlsplit(target_url)
        if target.scheme != "http" or not target.hostname:
            raise ValueError(f"es_compat_proxy forwards to a plain http:// URL, not {target_url!r}")
        self.target_host = target.hostname
        self.target_port = target.port or 80
        super().__init__(("127.0.0.1", 0), _Handler)


def start_proxy(target_url: str, observe: Observer | None = None) -> tuple[str, Callable[[], None]]:
    """Start the shim in front of target_url; returns (proxy_url, stop). stop() is idempotent.
    `observe(method, path, status, body)` sees every upstream answer (tests wait on what the cluster said)."""
    server = _ProxyServer(target_url, observe)
    thread = threading.Thread(target=server.serve_forever, name="es-compat-proxy", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    stopped = threading.Event()

    def stop() -> None:
        if stopped.is_set():
            return
        stopped.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)

    return f"http://{host}:{port}", stop
