"""Stops the HAProxy of a `mlops serve start` once that process is gone, however it went.

Ray Serve's HAProxy manager (a Ray actor) starts HAProxy, and HAProxy reloads itself as a new process,
so HAProxy is nobody's child that a dying process takes along. Serve's own shutdown stops it; a SIGTERM
to the whole process group (as systemd sends it) stops the manager first, and Ray's driver can end
without running any cleanup (its C++ handlers exit on a lost GCS), which left HAProxy listening on the
port. The janitor is a second process that ignores the signals, waits for its parent's pipe to close
(at any exit, a SIGKILL included) and then stops the HAProxy processes started with the instance's own
config folder and removes the folder. Standard library only: it starts in about 30 ms.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path


def stop_own_haproxy(folder: str) -> None:
    """SIGTERM to every HAProxy whose command line names `folder` (this instance's config folder)."""
    for cmdline_file in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline_file.read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if argv and os.path.basename(argv[0]) == b"haproxy" and any(folder.encode() in arg for arg in argv):
            try:
                os.kill(int(cmdline_file.parent.name), signal.SIGTERM)
            except ProcessLookupError:
                pass  # gone meanwhile


@contextlib.contextmanager
def ingress_folder(prefix: str, parent: str | None = None) -> Iterator[str]:
    """A fresh folder for HAProxy's config and sockets, with its janitor: bound to this process by a pipe only it
    holds open, it stops HAProxy and removes the folder when the block ends or the process does, however."""
    folder = tempfile.mkdtemp(prefix=prefix, dir=parent)
    janitor = subprocess.Popen([sys.executable, "-m", "mlops_assets.cli.ingress_janitor", folder], stdin=subprocess.PIPE, close_fds=True)
    try:
        yield folder
    finally:
        janitor.stdin.close()  # type: ignore[union-attr]
        janitor.wait(30)


def main(folder: str) -> int:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # a signal to the whole group is what it outlives
    while sys.stdin.buffer.read(4096):
        pass  # nothing is sent: the pipe closes when the parent ends
    stop_own_haproxy(folder)
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
