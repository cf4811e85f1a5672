"""A real S3-compatible server on loopback for the object-store tests.

moto's standalone server runs as a subprocess, not in a thread of the test
process: deltalake holds the GIL in some calls (DeltaTable.history), which
would deadlock an in-process server until the client times out.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.network import free_port

BUCKET = "mlops-test"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str

    def env(self) -> dict[str, str]:
        """What a deployment sets: the standard AWS variables (credentials are moto's dummies)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def keys(self, prefix: str, bucket: str | None = None) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket or self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@contextmanager
def moto_s3_server(log_dir: Path) -> Iterator[S3Server]:
    """Start moto_server on a free loopback port with one bucket; stop it on exit."""
    server_bin = Path(sys.executable).with_name("moto_server")
    if not server_bin.exists():
        pytest.skip("moto_server not installed: pip install 'moto[server]>=5.1,<6'")
    port = free_port()
    log = open(log_dir / "moto_server.log", "wb")
    proc = subprocess.Popen([str(server_bin), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {proc.returncode}; see {log_dir / 'moto_server.log'}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start listening within 30 s") from None
                time.sleep(0.05)
        server = S3Server(f"http://127.0.0.1:{port}", BUCKET)
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
