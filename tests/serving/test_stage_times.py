"""A model server times its own stages as it serves (status: stage_ms), and the bench turns two readings
of every replica into milliseconds per request."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from mlops_assets.cli.bench.serving_bench import v1_body, v2_body
from serving.stage_times import STAGES, StageTimes, per_request, total
from tests.support.serving import request_records


def test_totals_stay_exact_when_worker_threads_record_beside_the_loop():
    clock = StageTimes()

    def work():
        for _ in range(2_000):
            clock.record("features", time.perf_counter())

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = clock.snapshot()
    assert snap["features"]["calls"] == 8_000 and snap["features"]["ms"] >= 0
    assert set(snap) == {"features"}  # stages never recorded are left out


def test_per_request_is_the_work_between_two_readings_over_every_replica():
    before = [
        {"typing": {"calls": 10, "ms": 1.0}, "features": {"calls": 5, "ms": 2.0}},
        {"typing": {"calls": 4, "ms": 0.4}},
    ]
    after = [
        {"typing": {"calls": 30, "ms": 3.0}, "features": {"calls": 9, "ms": 6.0}},
        {"typing": {"calls": 24, "ms": 2.4}, "features": {"calls": 4, "ms": 2.0}},
    ]
    split = per_request(total(before), total(after))
    # 40 requests typed between the readings; 6 ms of features over them (batches of several requests)
    assert split == pytest.approx({"typing": 4.0 / 40, "features": 6.0 / 40})
    assert per_request(total(after), total(after)) == {}  # no request between them: nothing to divide
    # a stage no request met between the readings (a V1 request through the gateway is decoded there) is left out
    decoded_once = {**after[0], "decode": {"calls": 1, "ms": 0.1}}
    assert "decode" not in per_request(total([decoded_once]), total([{**decoded_once, "typing": {"calls": 40, "ms": 4.0}}]))


def test_a_served_request_is_timed_once_in_every_stage(champion_server, serving_registry):
    """The stages a V2 request meets in the champion (decode, typing, then its batch made one frame, features, predict and the log's
    hand-off for its batch), each counted once, in the status the bench reads."""
    server = champion_server
    server.reconfigure({"model_version": None})
    body = v2_body(request_records(3))  # the bench's own V2 body
    before = server.status()["stage_ms"]
    decoded = server._decoded(body, {}, server.schema)
    answer = asyncio.run(server.route(decoded.records, "staged", time.time()))
    assert len(answer["predictions"]) == 3
    status = server.status()
    after = status["stage_ms"]
    for stage in ("decode", "typing", "frame", "features", "predict", "log"):
        assert after[stage]["calls"] - before.get(stage, {}).get("calls", 0) == 1, stage
        assert after[stage]["ms"] > before.get(stage, {}).get("ms", 0.0), stage
    assert set(after) <= set(STAGES)
    assert status["replica"] and json.loads(json.dumps(status["stage_ms"])) == after  # JSON as the status route sends it
    server.protocol = "v1"  # a replica of the V1 route's own decodes V1 bodies, in the same stage
    assert len(server._decoded(v1_body(request_records(2)), {}, server.schema).records) == 2
    assert server.status()["stage_ms"]["decode"]["calls"] == after["decode"]["calls"] + 1
