"""Indexing throughput: dpipe's bulk sink beside the client's own `helpers.bulk`, into a local OpenSearch.

    python -m bench.index [--lines 300000] [--client opensearch]

Both write the same documents (the `indexed` route of templates/jobs/engine.als.yaml over a generated
archive) into fresh indices of the same local server, in batches of 1000: `helpers.bulk` (single process)
is the limit of this machine; dpipe runs the whole backfill (read, parse, decorate, archive, route, index)
on the local runner with 1 worker. Each run is a separate process; peak memory is its process tree's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.backfill import WORK, archive, timed

ROOT = Path(__file__).resolve().parent.parent


def helpers_bulk(url: str, client: str, logs: str, prefix: str) -> None:
    """Decorate the archive with dpipe's pure functions, then index the route's documents with helpers.bulk
    (only the bulk part is timed by the caller through the printed seconds)."""
    from bench.baseline import decorated_documents

    docs = decorated_documents(logs, ROOT / "templates" / "jobs" / "engine.als.yaml", "indexed", prefix)
    if client == "opensearch":
        from opensearchpy import OpenSearch, helpers

        es = OpenSearch(hosts=[url], timeout=60)
    else:
        from elasticsearch import Elasticsearch, helpers

        es = Elasticsearch(hosts=[url], request_timeout=60)
    actions = ({"_index": index, "_id": doc_id, "_source": body} for doc_id, index, body in docs)
    started = time.perf_counter()
    ok, errors = helpers.bulk(es, actions, chunk_size=1000, raise_on_error=False)
    print(json.dumps({"seconds": time.perf_counter() - started, "indexed": ok, "errors": len(errors)}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.index")
    parser.add_argument("--lines", type=int, default=300_000)
    parser.add_argument("--client", choices=("opensearch", "elasticsearch"), default="opensearch")
    parser.add_argument("--url", help="an existing server; default: start OpenSearch from tests/servers")
    parser.add_argument("--helpers", help=argparse.SUPPRESS)  # internal: run the helpers.bulk side
    args = parser.parse_args(argv)
    logs, manifest = archive(args.lines, 2)
    if args.helpers:
        helpers_bulk(args.url, args.client, str(logs / "*"), args.helpers)
        return 0
    server = None
    url = args.url
    if url is None:
        from tests.servers.opensearch import OpenSearchServer

        server = OpenSearchServer()
        server.start(Path(tempfile.mkdtemp(prefix="bench-os-")))
        url = server.url
    try:
        py = sys.executable
        _, peak, out = timed([py, "-m", "bench.index", "--lines", str(args.lines), "--client", args.client,
                                    "--url", url, "--helpers", "hb"])
        base = json.loads(out.strip().splitlines()[-1])
        job = yaml.safe_load((ROOT / "templates" / "jobs" / "engine.als.yaml").read_text())
        job["index"]["prefix"] = "dp"
        job["counters"] = []
        job["elasticsearch"] = {"routes": ["indexed"], "client": args.client, "hosts": [url]}
        config = WORK / "bench-index.yaml"
        config.write_text(yaml.safe_dump(job))
        out_dir = WORK / "bench-index-out"
        subprocess.run(["rm", "-rf", str(out_dir)], check=True)
        dp_seconds, dp_peak, _ = timed([py, "-m", "pipelines.backfill", "--runner", "FnApiRunner", "--config",
                                        str(config), "--input", str(logs / "*"), "--output", str(out_dir)])
        summary = json.loads((out_dir / "summary.json").read_text())
        docs = summary["index"]["indexed"]
        assert docs == base["indexed"] and summary["index"].get("rejected", 0) == 0, (summary["index"], base)
    finally:
        if server:
            server.stop()
    print(f"\n{docs:,} documents ({manifest['lines']:,} lines), {args.client}, 2 cores\n")
    print("| run | wall s | documents/s | vs helpers.bulk | peak memory |")
    print("|---|---:|---:|---:|---:|")
    print(f"| client helpers.bulk (bulk part only, 1 process) | {base['seconds']:.1f} | "
          f"{docs / base['seconds']:,.0f} | 1.00x | {peak:,.0f} MB |")
    print(f"| dpipe backfill with the index sink (whole job, 1 worker) | {dp_seconds:.1f} | "
          f"{docs / dp_seconds:,.0f} | {base['seconds'] / dp_seconds:.2f}x | {dp_peak:,.0f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
