"""A real S3-compatible server for tests: moto's server mode on 127.0.0.1, started and stopped by PID."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path
from typing import Any

from tests.servers import LocalServer

ACCESS = ("testing", "testing")


class S3Server(LocalServer):
    """`moto_server` in a subprocess; `endpoint`, `beam_options()`, `client()`, `make_bucket()`."""

    name = "moto_server"

    def __init__(self) -> None:
        super().__init__()
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(self.port)]

    def probe(self) -> None:
        urllib.request.urlopen(self.endpoint + "/", timeout=2).close()

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
