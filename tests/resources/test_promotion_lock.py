"""The promotion lease on a real Delta table: one holder at a time across threads and processes,
an expired holder overtaken, a wait that gives up naming the holder, promotions waiting on it."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from mlops_assets.core.names import PROMOTION_LOCK
from resources.delta_lake import DeltaLakeResource
from resources.promotion_lock import LeaseHeld, LeaseLost, _row, _try_take, promotion_lease


def _hold_in_turn(root: str, out, turns: int) -> None:
    delta = DeltaLakeResource(root=root)
    for _ in range(turns):
        with promotion_lease(delta, "p", wait_s=60):
            start = time.time()
            time.sleep(0.02)
            out.put((start, time.time()))


def _overlaps(spans: list[tuple[float, float]]) -> list:
    spans = sorted(spans)
    return [(a, b) for a, b in zip(spans, spans[1:], strict=False) if b[0] < a[1]]


def test_threads_hold_the_lease_one_at_a_time(tmp_path):
    delta = DeltaLakeResource(root=str(tmp_path))
    spans: list[tuple[float, float]] = []

    def worker():
        for _ in range(3):
            with promotion_lease(delta, "p", wait_s=60):
                start = time.time()
                time.sleep(0.02)
                spans.append((start, time.time()))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(spans) == 18 and not _overlaps(spans)
    assert delta.table("p", PROMOTION_LOCK).to_pyarrow_table().to_pylist()[0]["holder"] == ""  # released


def test_processes_hold_the_lease_one_at_a_time(tmp_path):
    """Separate processes, as two Dagster runs or a run and `mlops approve` are; the first take races too."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_hold_in_turn, args=(str(tmp_path), out, 3)) for _ in range(3)]
    for p in procs:
        p.start()
    spans = [out.get(timeout=120) for _ in range(9)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert not _overlaps(spans)


def test_an_expired_lease_is_overtaken_and_a_live_one_makes_the_wait_give_up(tmp_path):
    delta = DeltaLakeResource(root=str(tmp_path))
    assert _try_take(delta, "p", "crashed-run", ttl_s=0.2) is None  # a holder that never releases
    with pytest.raises(LeaseHeld, match="held by crashed-run"):
        with promotion_lease(delta, "p", wait_s=0.05):
            pass
    time.sleep(0.3)
    with promotion_lease(delta, "p", wait_s=5) as holder:
        assert delta.table("p", PROMOTION_LOCK).to_pyarrow_table().to_pylist()[0]["holder"] == holder


def test_a_live_holder_renews_its_lease_past_the_ttl_and_learns_when_it_was_overtaken(tmp_path):
    from deltalake import write_deltalake

    delta = DeltaLakeResource(root=str(tmp_path))
    with promotion_lease(delta, "p", ttl_s=0.4) as holder:
        time.sleep(1.2)  # three TTLs: without renewals any taker would have overtaken it
        with pytest.raises(LeaseHeld, match=f"held by {holder}"):
            with promotion_lease(delta, "p", wait_s=0.3):
                pass
    assert delta.table("p", PROMOTION_LOCK).to_pyarrow_table().to_pylist()[0]["holder"] == ""  # released

    with pytest.raises(LeaseLost, match="took-it-after-expiry"):
        with promotion_lease(delta, "p", ttl_s=0.4):
            # what a taker does once the lease expired (this process paused past the TTL, say)
            write_deltalake(delta.table("p", PROMOTION_LOCK), _row("took-it-after-expiry", time.time() + 60), mode="overwrite")
            time.sleep(0.5)
    rows = delta.table("p", PROMOTION_LOCK).to_pyarrow_table().to_pylist()
    assert rows[0]["holder"] == "took-it-after-expiry"  # the new holder's lease is left alone
    # taken just before the block ends, with no renewal in between: the release finds it gone
    write_deltalake(delta.table("p", PROMOTION_LOCK), _row("", 0.0), mode="overwrite")
    with pytest.raises(LeaseLost, match="a-late-taker"):
        with promotion_lease(delta, "p", ttl_s=60):
            write_deltalake(delta.table("p", PROMOTION_LOCK), _row("a-late-taker", time.time() + 60), mode="overwrite")


def test_a_promotion_waits_for_the_lease(tmp_path, monkeypatch):
    """Alias moves take the lease before the registry: a held lease stops an approval before it reads anything."""
    import resources.promotion_lock as lock
    from mlops_assets.models.promotion import approve
    from resources.mlflow_registry import MlflowRegistryResource

    delta = DeltaLakeResource(root=str(tmp_path / "delta"))
    registry = MlflowRegistryResource(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert _try_take(delta, "flights", "another-promotion", ttl_s=60) is None
    monkeypatch.setattr(lock, "WAIT_S", 0.2)
    with pytest.raises(LeaseHeld, match="held by another-promotion"):
        approve("flights", delta, registry, 1, by="dave", reason="ticket 1")


def test_a_lease_table_that_cannot_be_made_fails_at_once_naming_why(tmp_path, monkeypatch):
    """A Delta root that is a file (a mistyped home) used to be waited on for two minutes, then blamed on
    'the lease table is being created'. At once: no retry sleeps before the error (checked without a clock)."""
    root = tmp_path / "not-a-folder"
    root.write_text("")
    monkeypatch.setattr(time, "sleep", lambda s: pytest.fail(f"waited {s:.2f}s for a lease table that cannot be made"))
    with pytest.raises(Exception, match="[Nn]ot a directory") as raised:
        with promotion_lease(DeltaLakeResource(root=str(root)), "flights", wait_s=30):
            pass
    assert not isinstance(raised.value, LeaseHeld)
