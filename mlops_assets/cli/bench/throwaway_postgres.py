"""A real, throwaway PostgreSQL server: the cluster's Dagster storage, for a bench side and the deployment tests.

Debian's postgresql package (deploy/ci/install_system_packages.sh) provides the binaries; the server is
its own cluster made with initdb/pg_ctl on a free loopback port in a temp folder, with a random password
(SCRAM, as a managed Postgres asks), and it is stopped and removed afterwards. initdb refuses to run as
root, so as root the server runs as the `postgres` user (runuser).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mlops_assets.cli.ports import claim_port


def postgres_bindir() -> Path | None:
    """The server binaries: Debian keeps them out of PATH, in /usr/lib/postgresql/<major>/bin."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def unavailable() -> str | None:
    """Why no throwaway server can start on this machine (None when one can)."""
    if postgres_bindir() is None:
        return "PostgreSQL server binaries not installed (run deploy/ci/install_system_packages.sh)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run initdb as"
    return None


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str

    def url(self, db: str, scheme: str = "postgresql+psycopg2") -> str:
        return f"{scheme}://{self.user}:{self.password}@{self.host}:{self.port}/{db}"

    def create_database(self, name: str) -> None:
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password, dbname="postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

    def query(self, db: str, sql: str) -> list[tuple]:
        import psycopg2

        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password, dbname=db)
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return cur.fetchall()
        finally:
            conn.close()


@contextmanager
def throwaway_postgres() -> Iterator[PostgresServer]:
    """A server for the block; RuntimeError naming the reason where none can start (see `unavailable`)."""
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    bindir = postgres_bindir()
    assert bindir is not None
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    base = Path(tempfile.mkdtemp(prefix="mlops-pg-"))
    data, password = base / "data", secrets.token_urlsafe(16)
    (base / "pwfile").write_text(password)
    if as_root:
        shutil.chown(base, "postgres")
        shutil.chown(base / "pwfile", "postgres")
    port = claim_port()

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    started = False
    try:
        try:
            run(
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "mlops",
                f"--pwfile={base / 'pwfile'}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-sync",
            )
            opts = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
            run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(base / "server.log"), "-w", "-t", "60", "start")
            started = True
        except subprocess.CalledProcessError as err:
            log = (base / "server.log").read_text() if (base / "server.log").exists() else ""
            raise RuntimeError(f"{err.cmd[len(prefix)]} failed: {err.stderr.decode()}\n{log}") from err
        yield PostgresServer("127.0.0.1", port, "mlops", password)
    finally:
        if started:
            subprocess.run(
                [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], check=True, capture_output=True, timeout=60
            )
        shutil.rmtree(base, ignore_errors=True)
