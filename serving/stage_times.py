"""Where a model server's own time goes as it serves: seconds and calls per stage, since the server started.

The same code timed in a warm in-process loop understates a served request about twice: between
two requests the replica's core runs HAProxy, wrk and Ray, so the next one starts with cold
caches (in a champion replica at one client: features 0.14 ms in a loop of 300 against 0.27 ms
per request, predict 0.05 against 0.15; by hand). The status endpoint reports these totals and
`mlops bench serving` turns the difference around each case into a per-request split.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict

# the stages, in the order a request meets them; per request (decode, typing, encode) or per batch of
# requests (frame: the batch's typed requests made one frame; features, predict, log: the hand-off to the
# prediction log's writer thread)
STAGES = ("decode", "typing", "frame", "features", "predict", "log", "encode")


class StageTimes:
    """Totals per stage. Small requests are timed on the event loop, large ones on worker threads: a lock
    keeps the totals exact (uncontended, it costs a fraction of a microsecond)."""

    def __init__(self) -> None:
        self._calls: Counter[str] = Counter()
        self._seconds: defaultdict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def record(self, stage: str, started: float) -> float:
        """Add the time since `started` (a `time.perf_counter()` reading) to `stage`; the reading now, so
        consecutive stages chain without a second clock read."""
        now = time.perf_counter()
        with self._lock:
            self._calls[stage] += 1
            self._seconds[stage] += now - started
        return now

    def snapshot(self) -> dict[str, dict[str, float]]:
        """Per stage: calls and total milliseconds (totals, so two snapshots give the work between them)."""
        with self._lock:
            return {s: {"calls": self._calls[s], "ms": round(self._seconds[s] * 1000.0, 3)} for s in STAGES if self._calls[s]}


def total(snapshots: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Several servers' snapshots (the replicas of a group) as one."""
    out: dict[str, dict[str, float]] = {}
    for snap in snapshots:
        for stage, figures in snap.items():
            into = out.setdefault(stage, {"calls": 0, "ms": 0.0})
            into["calls"] += figures["calls"]
            into["ms"] += figures["ms"]
    return out


def per_request(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, float]:
    """Milliseconds per request of each stage between two snapshots of one server; requests are the typed
    ones (every request is typed once, whatever its protocol); a stage no request met between them (V1's
    decode is the gateway's) is left out. Empty when no request came between them."""
    requests = after.get("typing", {}).get("calls", 0) - before.get("typing", {}).get("calls", 0)
    if requests <= 0:
        return {}
    moved = [s for s in STAGES if s in after and after[s]["calls"] > before.get(s, {}).get("calls", 0)]
    return {s: (after[s]["ms"] - before.get(s, {}).get("ms", 0.0)) / requests for s in moved}
