"""Ports a local instance listens on, claimed where nothing else on the host takes ports at random.

Linux hands 32768-60999 to every outgoing connection and every bind to port 0, and Ray's workers listen on
10002-19999: a port found free there can be taken before the server binds it (seen in CI: HAProxy's stats
port once replicas talked over Serve's gRPC, and a test's HTTP port while Ray started). So ports come from
below, each block claimed by an exclusive lock on a file held for the claiming process's life: two instances
(or a test and a server) starting at once never pick the same one.
"""

from __future__ import annotations

import errno
import fcntl
import random
import socket
import tempfile
from pathlib import Path

from mlops_assets.cli.errors import CommandError

INGRESS_HTTP = (20_000, 29_000)  # direct-ingress replicas' HTTP ports, a block per instance
HAPROXY_STATS = (29_000, 30_000)  # HAProxy's stats and metrics ports, a pair per instance
INGRESS_GRPC = (30_000, 32_600)  # direct-ingress replicas' gRPC ports, a block per instance
SINGLE = (2_000, 10_000)  # one server's port (tests, benches): below Ray's workers
CLAIMS = Path(tempfile.gettempdir()) / "mlops-ingress-ports"

_claims: list = []  # lock files of the blocks this process holds (released when it exits)


def claim_block(size: int, low: int, high: int) -> int:
    """The first port of a block of `size` ports in low..high that no other process on this host has
    claimed and nobody listens on now. Blocks are aligned (they never half-overlap)."""
    CLAIMS.mkdir(exist_ok=True)
    bases = list(range(low, high - size + 1, size))
    random.shuffle(bases)
    for base in bases:
        claim = open(CLAIMS / f"{base}-{size}.lock", "w")
        try:
            fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            claim.close()  # another process holds this block
            continue
        if all(bind_error("0.0.0.0", port, reuse=False) is None for port in range(base, base + size)):
            _claims.append(claim)
            return base
        claim.close()
    raise RuntimeError(f"no free block of {size} ports in {low}..{high}")


def claim_port(low: int = SINGLE[0], high: int = SINGLE[1]) -> int:
    """A port for one server, claimed for this process's life."""
    return claim_block(1, low, high)


def bind_error(host: str, port: int, reuse: bool = True) -> OSError | None:
    """Why a server could not listen on host:port now (None if it could). `reuse` binds as servers do
    (SO_REUSEADDR: a port whose last connections are closing is not in use)."""
    with socket.socket() as s:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as err:
            return err
    return None


def require_listenable(host: str, ports_by_flag: dict[str, int]) -> None:
    """Refuse, naming its flag, a port something already listens on (or a host this machine cannot listen on):
    found before anything starts, not as a server's traceback once Ray, Serve or Dagster are up."""
    flags_of: dict[int, list[str]] = {}
    for flag, port in ports_by_flag.items():
        flags_of.setdefault(port, []).append(flag)
    for port, flags in flags_of.items():
        if len(flags) > 1:
            raise CommandError(f"{' and '.join(flags)} both name port {port}: each server needs a port of its own")
    for flag, port in ports_by_flag.items():
        err = bind_error(host, port)
        if err is None:
            continue
        why = err.strerror or str(err)
        if err.errno == errno.EADDRINUSE:
            raise CommandError(f"cannot listen on {host}:{port} ({why}): stop what listens there or pick another {flag}")
        if err.errno == errno.EACCES:
            raise CommandError(f"cannot listen on {host}:{port} ({why}): pick another {flag} (ports below 1024 need root)")
        raise CommandError(f"cannot listen on {host}:{port} ({why}): pick a --host this machine has (127.0.0.1, or 0.0.0.0 for all)")
