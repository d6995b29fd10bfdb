"""A real S3-compatible server for tests: moto's server mode on 127.0.0.1, started and stopped by PID."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.servers import free_port, jvm

ACCESS = ("testing", "testing")


class S3Server:
    """`moto_server` in a subprocess; `endpoint`, `beam_options()`, `client()`, `make_bucket()`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, log: Path, timeout: float = 60) -> None:
        server = Path(sys.executable).with_name("moto_server")
        self._log = log.open("wb")
        self._proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(self.port)],
                                      stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto_server exited ({self._proc.returncode}): {log.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(self.endpoint + "/", timeout=2).close()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.endpoint} within {timeout} s")

    def beam_options(self) -> list[str]:
        return ["--s3_endpoint_url", self.endpoint, "--s3_access_key_id", ACCESS[0],
                "--s3_secret_access_key", ACCESS[1], "--s3_region_name", "us-east-1"]

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS[0],
                            aws_secret_access_key=ACCESS[1], region_name="us-east-1")

    def make_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def upload_dir(self, folder: Path, bucket: str, prefix: str) -> None:
        s3 = self.client()
        for path in sorted(folder.iterdir()):
            s3.upload_file(str(path), bucket, f"{prefix}/{path.name}")

    def stop(self) -> None:
        jvm.stop_process(self._proc)  # not a JVM, but stopped the same way: by PID
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
