"""The model server's own contract, driven in-process (no Ray): readiness and the atomic swap.

Serve calls `reconfigure` on a live replica while requests keep arriving; the
replica must never answer from a half-loaded model and never fail a request.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from mlops_assets.core.feature_contract import load_feature_module
from mlops_assets.defs.flights.upstream import land_days
from resources.delta_lake import DeltaLakeResource
from resources.serving import ServeSettings
from serving.config import CHALLENGER_DEPLOYMENT
from serving.deployments import ModelServer, NotReady
from serving.requests import RequestError, RequestSchema, typed_frame
from tests.support.platform import Platform
from tests.support.serving import (
    SERVE_DAY,
    offline_features,
    request_records,
)

Server = ModelServer.func_or_class  # the plain class Serve runs in each replica


def _frame(reg, n: int) -> pl.DataFrame:
    module = load_feature_module(reg.decl)
    return typed_frame(request_records(n), RequestSchema.of(reg.decl, module.input_columns(reg.decl)))


@pytest.fixture
def server(champion_server):
    return champion_server


def test_not_ready_without_a_champion(serving_registry, tmp_path):
    empty = ServeSettings(pipeline="flights", tracking_uri=f"sqlite:///{tmp_path / 'empty.db'}", delta_root=serving_registry.delta.root)
    s = Server(empty.model_dump(), "champion")
    try:
        s.reconfigure({"model_version": None})
        assert s.status()["ready"] is False
        with pytest.raises(NotReady, match="no champion model loaded"):
            s.predict(_frame(serving_registry, 2), "r", 0.0, "champion", True)
    finally:
        s.close()


def test_follows_the_alias_and_predicts_like_offline(server, serving_registry):
    server.reconfigure({"model_version": None})
    status = server.status()
    assert status["ready"] and status["model_version"] == serving_registry.champion
    assert status["reference"]["history_range"] == "2013-01-08 .. 2013-02-04"  # the 28 days before the served day
    result = server.predict(_frame(serving_registry, 12), "r1", 0.0, "champion", True)
    booster = serving_registry.boosters[serving_registry.champion]
    features = offline_features(serving_registry, request_records(12))
    expected = booster.predict(features.select(booster.feature_name()).cast(pl.Float64).to_numpy())
    np.testing.assert_allclose(result["predictions"], expected, rtol=0, atol=1e-9)


def test_a_replicas_feature_reference_follows_the_days_ingested_after_its_load(serving_registry, tmp_path):
    """A replica built its history statistics once per version load: a day ingested afterwards never reached
    the features of requests until the next model. It now rebuilds them when raw (or a reference table) moves,
    and answers as the features asset would featurize the next day."""
    shutil.copytree(serving_registry.delta.root, tmp_path / "delta")
    here = replace(serving_registry, delta=DeltaLakeResource(root=str(tmp_path / "delta")))
    settings = ServeSettings(pipeline="flights", tracking_uri=here.tracking_uri, delta_root=here.delta.root)
    s = Server(settings.model_dump(), "champion")
    booster = here.boosters[here.champion]

    def answers_like_offline(day: date) -> None:
        records = request_records(12, day)
        frame = typed_frame(records, RequestSchema.of(here.decl, load_feature_module(here.decl).input_columns(here.decl)))
        served = s.predict(frame, f"r-{day}", 0.0, "champion", True)["predictions"]
        features = offline_features(here, records, day)
        expected = booster.predict(features.select(booster.feature_name()).cast(pl.Float64).to_numpy())
        np.testing.assert_allclose(served, expected, rtol=0, atol=1e-9)

    try:
        s.reconfigure({"model_version": here.champion})
        assert s.status()["reference"]["history_range"] == "2013-01-08 .. 2013-02-04"
        assert s.status()["reference_refresh"] == {"every_s": 60.0, "rebuilt": 0, "last_error": None}
        assert not s.refresh_reference()  # nothing moved: nothing rebuilt
        answers_like_offline(SERVE_DAY)

        (tmp_path / "dagster").mkdir()
        with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
            plat = Platform(tmp_path, [here.decl], instance)
            land_days(here.decl, plat.landing, SERVE_DAY, 1)
            plat.ingest("flights", [SERVE_DAY.isoformat()])
        loaded = s.loaded
        assert s.refresh_reference()
        assert s.loaded.model is loaded.model and s.loaded.reference is not loaded.reference  # the model stays
        assert s.status()["reference"]["history_range"] == "2013-01-09 .. 2013-02-05"
        answers_like_offline(date(2013, 2, 6))
        assert not s.refresh_reference()
    finally:
        s.close()


def test_close_writes_the_log_and_removes_the_downloaded_model(serving_registry):
    """A server built in-process (bench, tests) is never garbage-collected once its heap is frozen: `close`
    is what removes its model folder from the temp directory, after the log's queued rows are written."""
    s = Server(
        ServeSettings(pipeline="flights", tracking_uri=serving_registry.tracking_uri, delta_root=serving_registry.delta.root).model_dump(),
        "champion",
    )
    s.reconfigure({"model_version": serving_registry.champion})
    model_dir = s.loaded.model.local_dir
    assert model_dir and os.path.isdir(model_dir) and model_dir.startswith(s.cache_dir)
    s.predict(_frame(serving_registry, 3), "closing", 0.0, "champion", True)
    s.close()
    assert not os.path.exists(s.cache_dir)
    assert s.logger.stats()["logged_rows"] >= 3 and not s.logger.stats()["queued_rows"]
    s.close()  # again (Serve's `__del__` after an owner's close): nothing left to do, no error


def test_a_killed_replicas_model_folder_is_removed_by_the_next_replica_on_the_host(serving_registry, tmp_path, monkeypatch):
    """A killed replica cannot remove its model folder, and Serve's replacement downloads the model again:
    each restart left a copy. A replica starting removes the folders of replica processes that are gone."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    settings = ServeSettings(pipeline="flights", tracking_uri=serving_registry.tracking_uri, delta_root=serving_registry.delta.root)
    replica = (
        "import json, sys, time\n"
        "from serving.deployments import ModelServer\n"
        "s = ModelServer.func_or_class(json.loads(sys.argv[1]), 'champion')\n"
        "s.reconfigure({'model_version': int(sys.argv[2])})\n"
        "print(s.cache_dir, flush=True)\n"
        "time.sleep(600)\n"
    )
    args = [sys.executable, "-c", replica, json.dumps(settings.model_dump()), str(serving_registry.champion)]
    killed = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=os.environ | {"TMPDIR": str(tmp_path)})
    try:
        folder = killed.stdout.readline().strip()
        assert folder.startswith(str(tmp_path)) and any(Path(folder).rglob("*")), "the replica downloaded its model"
    finally:
        killed.kill()
        killed.wait(30)
    unrelated = tmp_path / "mlops-serve-notes"  # not a model folder: no process id in its name
    unrelated.mkdir()
    (tmp_path / "mlops-serve-x-99999999999999999999-abc").mkdir()  # no process has such an id: removed, not a crash
    s = Server(settings.model_dump(), "champion")
    try:
        assert not os.path.exists(folder)
        assert os.path.isdir(s.cache_dir) and f"-{os.getpid()}-" in os.path.basename(s.cache_dir)
        assert unrelated.is_dir() and not (tmp_path / "mlops-serve-x-99999999999999999999-abc").exists()
        Server(settings.model_dump(), "champion").close()  # a replica beside it leaves the live one's folder alone
        assert os.path.isdir(s.cache_dir)
    finally:
        s.close()


def test_reconfigure_swaps_atomically_under_concurrent_predictions(server, serving_registry):
    server.reconfigure({"model_version": serving_registry.champion})
    frame = _frame(serving_registry, 5)
    answers: list = []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                answers.append(server.predict(frame, "r", 0.0, "champion", True)["model_version"])
            except Exception as err:  # recorded, then asserted absent
                answers.append(err)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        server.reconfigure({"model_version": serving_registry.challenger})
        server.reconfigure({"model_version": serving_registry.champion})
    finally:
        stop.set()
        for t in threads:
            t.join()
    errors = [a for a in answers if isinstance(a, Exception)]
    assert not errors, errors[:3]
    assert set(answers) <= {serving_registry.champion, serving_registry.challenger}
    assert server.status()["model_version"] == serving_registry.champion and server.status()["loads"] == 3


def test_a_load_leaves_the_loaded_heap_frozen_and_a_swapped_out_version_collected(server, serving_registry):
    import gc
    import weakref

    server.reconfigure({"model_version": serving_registry.champion})
    old = weakref.ref(server.loaded.index)
    assert gc.get_freeze_count() > 10_000  # the libraries, the model and its index: out of the collector's walks
    server.reconfigure({"model_version": serving_registry.challenger})
    server.reconfigure({"model_version": serving_registry.champion})
    assert old() is None  # the swapped-out version's index is gone, cycles and all
    assert gc.get_freeze_count() > 10_000


def test_a_registry_that_does_not_answer_leaves_the_loaded_model_serving(server, serving_registry, tmp_path):
    """Following the alias while the registry errs: the reconfigure fails (Serve says so) and the replica keeps
    answering with the version it has; it used to read the error as "no champion" and drop its model."""
    server.reconfigure({"model_version": None})
    unreadable = tmp_path / "registry.db"
    unreadable.write_text("not a database")
    server.settings = server.settings.model_copy(update={"tracking_uri": f"sqlite:///{unreadable}"})
    with pytest.raises(Exception, match="file is not a database"):
        server.reconfigure({"model_version": None})
    assert server.status()["ready"] and server.status()["model_version"] == serving_registry.champion
    assert server.predict(_frame(serving_registry, 2), "r", 0.0, "champion", True)["model_version"] == serving_registry.champion


def test_traffic_shares_reconfigure_without_a_model_load(server, serving_registry):
    """Shares sit in the champion's user_config next to its version: changing them loads nothing."""
    server.reconfigure({"model_version": serving_registry.champion})
    loads = server.status()["loads"]
    server.reconfigure({"model_version": serving_registry.champion, "canary_share": 0.4, "shadow": True})
    assert (server.canary_share, server.shadow, server.status()["loads"]) == (0.4, True, loads)
    server.reconfigure({"model_version": serving_registry.champion})  # shares left out: the declared ones
    assert (server.canary_share, server.shadow) == (0.0, False)


def test_route_types_records_and_answers_champion_and_pinned_versions(server, serving_registry):
    """The ingress path in-process (no challenger bound): raw records in, LightGBM's predictions out."""
    server.reconfigure({"model_version": serving_registry.champion, "canary_share": 1.0, "shadow": True})
    records = request_records(3)
    booster = serving_registry.boosters[serving_registry.champion]
    expected = booster.predict(offline_features(serving_registry, records).select(booster.feature_name()).cast(pl.Float64).to_numpy())

    async def unbatched(*item):  # @serve.batch needs a Serve replica; batching has its own test (test_serving_fast_path)
        answer = server.predict_many([(*item, None)[:6]])[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    server.infer = unbatched

    async def requests():
        answer = await server.route(records, "r", 0.0)
        pinned = await server.route(records, "p", 0.0, serving_registry.champion)
        with pytest.raises(RequestError) as missing:
            await server.route(records, "q", 0.0, 999)
        # through the gateway's handle the refusal is the answer, not an exception Serve logs as a failed request
        refusal = await server.route_answer(records, "q", 0.0, 999)
        assert isinstance(refusal, RequestError) and (refusal.status, refusal.message) == (missing.value.status, missing.value.message)
        return answer, pinned, missing.value

    answer, pinned, missing = asyncio.run(requests())
    assert answer["role"] == "champion" and answer["model_version"] == serving_registry.champion  # no challenger: no canary
    np.testing.assert_array_equal(np.asarray(answer["predictions"]), expected)
    assert pinned["role"] == "champion" and pinned["predictions"] == answer["predictions"]
    assert missing.status == 404 and "version 999" in missing.message
    # each came alone through `route` (the gateway's handle): answered without the batch queue, as lone HTTP requests are
    assert server.counts == {"champion": 1, "pinned_champion": 1, "alone": 4}  # the refused version asked twice


def test_shadow_mirrors_are_bounded_and_the_overflow_counted(server, serving_registry):
    """A challenger that does not answer must not pile up mirrored work in the champion."""
    server.reconfigure({"model_version": serving_registry.champion, "shadow": True})
    bound = server.decl.serving.traffic.shadow_max_in_flight
    records = request_records(1)

    async def unbatched(*item):
        answer = server.predict_many([(*item, None)[:6]])[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    class StuckChallenger:  # the unit's edge: a challenger replica that never answers
        class infer:
            @staticmethod
            async def remote(*args, **kwargs):
                await asyncio.Event().wait()

    server.infer = unbatched
    server._peers[CHALLENGER_DEPLOYMENT] = StuckChallenger()

    async def flood():
        answers = [await server.route(records, f"r{i}", 0.0) for i in range(bound + 10)]
        in_flight = len(server._background)
        for task in list(server._background):
            task.cancel()
        return answers, in_flight

    answers, in_flight = asyncio.run(flood())
    assert all(a["role"] == "champion" for a in answers)  # every request was answered
    assert in_flight == bound and server.counts["shadow_dropped"] == 10


def test_a_replica_loads_the_handed_source_without_the_registry_and_names_a_bad_one(serving_registry, tmp_path):
    """A replica that (re)starts gets its version's `model_source` in user_config: it loads from there even when
    the registry has no such model; a source for another version is not used; a malformed one is named."""
    from resources.registered_models import model_source
    from serving.loaded_model import ModelLoadError

    source = model_source(serving_registry.tracking_uri, "flights", serving_registry.champion).model_dump()
    empty_registry = f"sqlite:///{tmp_path / 'no-registry.db'}"  # any registry lookup here finds no model
    s = Server(
        ServeSettings(pipeline="flights", tracking_uri=empty_registry, delta_root=serving_registry.delta.root).model_dump(), "champion"
    )
    try:
        s.reconfigure({"model_version": serving_registry.champion, "model_source": source})
        assert s.status()["model_version"] == serving_registry.champion
        result = s.predict(_frame(serving_registry, 5), "r", 0.0, "champion", True)
        booster = serving_registry.boosters[serving_registry.champion]
        features = offline_features(serving_registry, request_records(5))
        np.testing.assert_allclose(
            result["predictions"], booster.predict(features.select(booster.feature_name()).to_numpy()), rtol=0, atol=1e-9
        )
        with pytest.raises(ModelLoadError, match="has no version"):  # the source names v{champion}: the registry is asked
            s.reconfigure({"model_version": serving_registry.challenger, "model_source": source})
        with pytest.raises(ModelLoadError, match="user_config.model_source of flights/champion: artifact_uri: Field required"):
            s.reconfigure({"model_version": serving_registry.challenger, "model_source": {"version": serving_registry.challenger}})
        assert s.status()["model_version"] == serving_registry.champion  # a refused load changes nothing
    finally:
        s.close()


def test_a_refused_or_failed_load_changes_nothing_and_a_withdrawn_version_frees_its_folder(serving_registry, monkeypatch):
    """A refused version's canary share and shadow switch applied all the same (routing by them to whatever
    challenger was held); a load that failed after its download left the copy behind, one per try; a withdrawn
    version's folder stayed for the replica's life."""
    import serving.deployments as deployments
    from serving.loaded_model import ModelLoadError

    reg = serving_registry
    settings = ServeSettings(pipeline="flights", tracking_uri=reg.tracking_uri, delta_root=reg.delta.root).model_dump()
    s = Server(settings, "challenger")
    try:
        s.reconfigure({"model_version": reg.champion})
        with pytest.raises(ModelLoadError, match="no version 999"):
            s.reconfigure({"model_version": 999, "canary_share": 1.0, "shadow": True})
        assert (s.status()["model_version"], s.canary_share, s.shadow) == (reg.champion, 0.0, False)

        def unreachable(*args, **kwargs):
            raise OSError("delta store unreachable")

        with monkeypatch.context() as patched:
            patched.setattr(deployments, "serving_reference", unreachable)
            for _ in range(3):
                with pytest.raises(OSError, match="unreachable"):
                    s.reconfigure({"model_version": reg.challenger})
        assert len(os.listdir(s.cache_dir)) == 1 and s.status()["model_version"] == reg.champion  # only the one serving

        s.reconfigure({"model_version": None, "follow_alias": False, "canary_share": 0.0})  # the challenger withdrawn
        assert s.loaded is None and os.listdir(s.cache_dir) == []
    finally:
        s.close()


def test_a_canarys_logged_latency_leaves_out_the_hop_from_the_ingress(server, serving_registry, monkeypatch):
    """A rollout's p99 guard compares the canary's logged latency with the champion's. The canary's included the hop
    from the champion's replica to the challenger's (p50 5-8 ms against 1 ms by hand), which the version does not pay
    once it is champion: healthy versions were rolled back under the default ratio of 2."""
    server.reconfigure({"model_version": serving_registry.champion, "canary_share": 1.0})
    hop_s = 0.5

    async def unbatched(item):  # @serve.batch needs a Serve replica
        (answer,) = server.predict_many([item])
        if isinstance(answer, BaseException):
            raise answer
        return answer

    class SlowHop:  # the challenger's handle: the request arrives hop_s after it was handed over
        class infer:
            @staticmethod
            async def remote(*args, **kwargs):
                await asyncio.sleep(hop_s)
                return await server.infer(*args, **kwargs)

    answered = []
    monkeypatch.setattr(server, "_batched", unbatched)
    monkeypatch.setattr(server.logger, "log_answered", answered.append)
    server._peers[CHALLENGER_DEPLOYMENT] = SlowHop()
    answer = asyncio.run(server.route(request_records(1), "r", time.time()))
    assert answer["role"] == "canary"
    (batch,) = answered
    (request,) = batch.requests
    assert request[1] == "canary" and batch.answered_at - request[3] < hop_s / 2
