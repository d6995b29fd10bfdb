"""python -m pipelines.worker_pool --port N: an SDK worker pool for `--environment_type=EXTERNAL` on a host
without Docker (a TaskManager's sidecar; the tests' stand-in for one), whose workers run with the job's options.

Beam's `worker_pool_main` alone starts each worker as a bare `SdkHarness` that never asks the runner's
provision service for the job: no pipeline options reach it, so Beam's filesystems in it have no S3 or HDFS
settings (only the pool's own environment). In Beam's SDK image the `boot` binary is the pool's container
executable and does that; here `dpipe-sdk-worker` (`worker_main`) does the part dpipe needs: it fetches the
provision info (options, endpoints, capabilities) and execs Beam's `sdk_worker_main` with it. Staged
artifacts are not installed: dpipe must be installed where the pool runs (this venv, or the SDK image).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import grpc
from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc
from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer
from google.protobuf import json_format

log = logging.getLogger("dpipe.worker_pool")
WORKER = "dpipe-sdk-worker"
"""The console script (pyproject.toml) the pool runs per worker, beside this interpreter."""


def worker_executable() -> str:
    path = Path(sys.executable).with_name(WORKER)
    if not path.is_file():
        raise SystemExit(f"dpipe: {path} is missing: reinstall dpipe (`make setup` or `pip install .`)")
    return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.worker_pool", allow_abbrev=False,
                                     description="Beam SDK worker pool whose workers get the job's options.")
    parser.add_argument("--port", type=int, default=50000, help="the pool's port (0: any; printed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    address, server = BeamFnExternalWorkerPoolServicer.start(
        use_process=True, port=args.port, container_executable=worker_executable())
    print(f"dpipe worker pool: listening on {address}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # stopped by PID: exit normally, so atexit ends the workers
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    server.stop(0)
    return 0


def worker_main(argv: list[str] | None = None) -> None:
    """The SDK container contract's flags in, Beam's sdk_worker_main out (with the job's options)."""
    parser = argparse.ArgumentParser(prog=WORKER)
    for flag in ("id", "provision_endpoint", "control_endpoint", "logging_endpoint", "artifact_endpoint"):
        parser.add_argument(f"--{flag}", default="")
    args, _ = parser.parse_known_args(argv)
    with grpc.insecure_channel(args.provision_endpoint) as channel:
        info = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel).GetProvisionInfo(
            beam_provision_api_pb2.GetProvisionInfoRequest(), metadata=[("worker_id", args.id)]).info
    control = info.control_endpoint.url or args.control_endpoint
    logging_url = info.logging_endpoint.url or args.logging_endpoint
    env = {
        **os.environ,
        "WORKER_ID": args.id,
        "PIPELINE_OPTIONS": json.dumps(json_format.MessageToDict(info.pipeline_options)),
        "CONTROL_API_SERVICE_DESCRIPTOR": f'url: "{control}"',
        "LOGGING_API_SERVICE_DESCRIPTOR": f'url: "{logging_url}"',
        "RUNNER_CAPABILITIES": " ".join(info.runner_capabilities),
    }
    if info.status_endpoint.url:
        env["STATUS_API_SERVICE_DESCRIPTOR"] = f'url: "{info.status_endpoint.url}"'
    os.execve(sys.executable, [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"], env)


if __name__ == "__main__":
    sys.exit(main())
