"""The Serve deployments of one pipeline: model servers, the champion's CPU group also routing.

`ModelServer` holds one model version (role champion or challenger, on CPU or
GPU) with its feature reference. The version arrives in `user_config`, with
where its files are (`model_source`, so a replica that starts needs no MLflow
client); a change loads the new version next to the old one and swaps a single
reference, so requests in flight finish on the old model and none fails during
a swap.

The champion's CPU group is the application's ingress (`route`) for V2 infer; the
V1 route's application has a champion CPU group of its own (`protocol="v1"`), which
reaches the challenger and the GPU group of the pipeline's application (`peers_app`)
by name. Either group types the
records, then answers itself, or hands the request to the challenger for the
declared canary share (or to the GPU group for its share); with shadow on it
also mirrors the request to the challenger, whose answer is logged and never
returned. Routing in the champion rather than in a router deployment in front
of it saves a Ray hand-off per request (`mlops bench serving`). Shares live in
the champion's `user_config` next to its version, so they change without
restarts or model loads.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import polars as pl
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request

from mlops_assets.core.declaration import ReplicaGroupSpec, ServingSpec, field_errors
from mlops_assets.core.feature_contract import FeatureReference, load_feature_module
from mlops_assets.core.lookups import LookupIndex
from mlops_assets.core.names import CHALLENGER, CHAMPION, FEATURES, SUBJECT_PREFIX
from resources.registered_models import ModelSource, resolve_alias
from resources.serving import ServeSettings
from serving.compiled_trees import CompileError, compile_forest
from serving.config import CHALLENGER_DEPLOYMENT, CHAMPION_GPU_DEPLOYMENT, infer_route, predict_route, v1_app_name
from serving.exact_predictions import checked
from serving.http_answers import NotReady, answer_prediction, error, one_request_id, post_only, v1_predict_response, v2_infer_response
from serving.loaded_model import LoadedModel, ModelLoadError, load_source, load_version, usable_cores
from serving.prediction_log import Answered, PredictionLogger, log_rows
from serving.reference import ReferenceRefresher, reference_sources, serving_reference
from serving.replica_files import model_folder
from serving.requests import (
    CheckedRows,
    Columns,
    Decoded,
    RequestError,
    RequestSchema,
    decode_v1,
    decode_v2,
    request_frame,
    typed_request,
)
from serving.single_row import SingleRowError, SingleRowPredictor
from serving.stage_times import StageTimes

log = logging.getLogger(__name__)
# one compiled library per model file on this host, whichever replica builds it first
COMPILED_TREES_CACHE = os.path.join(tempfile.gettempdir(), "mlops-compiled-trees")
# requests up to this many records are typed, featurized and predicted on the event loop; larger ones in a
# thread, so the loop meanwhile reads the next request's body (polars and LightGBM release the GIL): with user
# code on Serve's own loop, 10,000-row V2 batches fell from 117,244 to 93,838 rows/s when they were predicted on it
INLINE_ROWS = 64
SINGLE_ROW_CHECK = 2_000  # rows the single-row C API is checked on, one call each (about 30 ms)


class VersionNotHere(LookupError):
    """A request pinned to a version this replica does not hold."""


@dataclass(frozen=True)
class Loaded:
    model: LoadedModel
    reference: FeatureReference
    index: LookupIndex  # the declared lookups as hash indexes over `reference`, built once per load
    info: dict


def freeze_heap() -> None:
    """Move what a replica holds once a version is loaded (its libraries, the model, the lookup index) out of the
    cyclic garbage collector's reach. A full collection walked about 490,000 such objects, 0.26 s each time, a
    pause every few thousand requests (by hand, in-process). Unfrozen and collected first, so the cycles of a
    swapped-out version are freed at the next load."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def replica_group(serving: ServingSpec, role: str, device: str, protocol: str) -> ReplicaGroupSpec:
    """The declared group a replica belongs to (its batch threads come from there)."""
    if role == CHALLENGER:
        return serving.challenger
    if device == "gpu":
        return serving.gpu or serving.cpu
    if protocol == "v1":
        return serving.v1_route or serving.cpu
    return serving.cpu


@serve.deployment
class ModelServer:
    def __init__(
        self,
        settings: dict,
        role: str,
        device: str = "cpu",
        challenger: DeploymentHandle | None = None,
        champion_gpu: DeploymentHandle | None = None,
        gpu_share: float = 0.0,
        protocol: str = "v2",
        peers_app: str | None = None,
    ):
        self.settings = ServeSettings(**settings)
        self.decl = self.settings.declaration()
        self.module = load_feature_module(self.decl)
        self.role = role
        self.device = device
        serving = self.decl.serving
        self.group = replica_group(serving, role, device, protocol)
        # routing (used where this is the application's ingress: the champion's CPU group)
        self.schema = RequestSchema.of(self.decl, self.module.input_columns(self.decl))
        self.protocol = protocol  # what `__call__` answers: V2 infer, or V1 predict (the V1 route's application)
        self.peers_app = peers_app  # the application whose challenger and GPU group these replicas hand requests to
        self._peers: dict[str, DeploymentHandle | None] = {}
        self._v1_route: DeploymentHandle | None = None  # the V1 route's application, for the status
        if peers_app is None:
            self._peers = {CHALLENGER_DEPLOYMENT: challenger, CHAMPION_GPU_DEPLOYMENT: champion_gpu}
        self.gpu_share = gpu_share if champion_gpu is not None or peers_app is not None else 0.0
        self.canary_share = self.decl.serving.traffic.canary_share
        self.shadow = self.decl.serving.traffic.shadow
        self.rng = random.Random()
        self.counts: Counter[str] = Counter()
        self._background: set[asyncio.Task] = set()
        self._requests = 0  # requests in this replica now, HTTP (`__call__`) or by handle (`route`): a lone one skips the batch queue
        self.loaded: Loaded | None = None
        self.loads = 0
        self.stage_times = StageTimes()  # this replica's own work, stage by stage (status: stage_ms)
        self.replica = f"{socket.gethostname()}:{os.getpid()}"  # tells replicas' status answers apart
        self.cache_dir = model_folder(self.decl.name, role)
        flush = self.settings.log_flush_seconds or self.decl.serving.log_flush_seconds
        self.logger = PredictionLogger(
            self.settings.delta(), self.decl.name, self.decl.serving.log_queue_rows, flush, spill_dir=self.settings.spill_dir()
        )
        self._swap = threading.Lock()  # a version's load and a reference's refresh replace `loaded` one at a time
        self.refresher = ReferenceRefresher(self.refresh_reference, serving.reference_refresh_seconds, f"{self.decl.name}-{role}")

    def reconfigure(self, config: dict) -> None:
        """Load the configured version (None: whatever the role's alias points at), swap it in, then apply the
        traffic shares: a load that fails changes nothing, shares included (they were set before the load, so a
        refused version's canary share went to whatever challenger was held)."""
        config = config or {}
        traffic = self.decl.serving.traffic
        shares = float(config.get("canary_share", traffic.canary_share)), bool(config.get("shadow", traffic.shadow))
        uri = self.settings.resolved_tracking_uri()
        version = config.get("model_version")
        if version is None and config.get("follow_alias", True):  # False: deployed with no version on purpose
            version = resolve_alias(uri, self.decl.name, CHAMPION if self.role == CHAMPION else CHALLENGER)
        if version is None:
            # nothing registered under the alias yet, or withdrawn: stay up, report not ready, and free its folder
            with self._swap:
                previous, self.loaded = self.loaded, None
            if previous is not None and previous.model.local_dir:
                shutil.rmtree(previous.model.local_dir, ignore_errors=True)
            self.canary_share, self.shadow = shares
            return
        if self.loaded is not None and self.loaded.model.version == int(version):
            self.canary_share, self.shadow = shares
            return  # Serve also reconfigures on rank changes (surge rollouts): nothing to load then
        model = self._load(uri, int(version), config.get("model_source"))
        try:
            model.batch_threads = self.group.batch_threads
            reference, info = serving_reference(self.decl, self.module, self.settings.delta())
            loaded = Loaded(model, reference, self.module.lookup_index(reference), info)
        except BaseException:
            if model.local_dir:  # the downloaded copy of a version that never served
                shutil.rmtree(model.local_dir, ignore_errors=True)
            raise
        with self._swap:
            previous, self.loaded = self.loaded, loaded
        self.canary_share, self.shadow = shares
        self.loads += 1
        if self.device != "cpu":
            model.single_row_note = f"{self.device} replicas predict every request on the {self.device}"
        else:  # Booster.predict answers meanwhile
            if self.decl.serving.compiled_trees:
                model.compiled_note = "building"
            threading.Thread(target=self._faster_predictors, args=(model,), name="faster-predictors", daemon=True).start()
        if previous is not None and previous.model.local_dir:
            shutil.rmtree(previous.model.local_dir, ignore_errors=True)
        del previous
        freeze_heap()

    def refresh_reference(self) -> bool:
        """Rebuild the loaded version's feature reference when a table it was built from has moved (a day ingested
        or landed again, a reference table replaced), and swap it in as a version is: requests then look up the
        history the features asset would use for the next day, not the history as of the version's load."""
        loaded = self.loaded
        if loaded is None:
            return False
        delta = self.settings.delta()
        sources = reference_sources(self.decl, delta)
        if sources == loaded.info.get("sources"):
            return False
        reference, info = serving_reference(self.decl, self.module, delta, sources)
        fresh = Loaded(loaded.model, reference, self.module.lookup_index(reference), info)
        with self._swap:
            if self.loaded is not loaded:  # a version loaded meanwhile, with a reference of its own
                return False
            self.loaded = fresh
        log.info("%s/%s: feature reference rebuilt, history %s", self.decl.name, self.role, info["history_range"])
        return True

    def _load(self, tracking_uri: str, version: int, source: dict | None) -> LoadedModel:
        """The version from the source its deployment handed over (no MLflow client in this replica), else
        looked up in the registry (a config that names only the version: `serve run`, an older deployment)."""
        if source is not None:
            try:
                handed = ModelSource.model_validate(source)
            except ValidationError as err:
                bad = "; ".join(field_errors(err))
                raise ModelLoadError(f"user_config.model_source of {self.decl.name}/{self.role}: {bad}") from None
            if handed.version == version:
                return load_source(self.decl.name, handed, self.device, self.cache_dir, tracking_uri)
        return load_version(tracking_uri, self.decl.name, version, self.device, self.cache_dir)

    def _faster_predictors(self, model: LoadedModel) -> None:
        """Off the request path, once per version: LightGBM's single-row C API for lone rows and, where declared,
        compiled trees for large requests. Each serves only once it predicts exactly what `Booster.predict`
        predicts on the latest partition of the features table; otherwise the status says why not."""
        try:
            booster = model.booster
            assert booster is not None  # a CPU model always has one
            rows = self._check_rows(model)
            expected = np.asarray(booster.predict(rows, num_threads=1))
            model.single_row, model.single_row_note = checked(
                lambda: SingleRowPredictor(
                    model.model_file, len(model.feature_columns), booster.num_model_per_iteration(), booster.best_iteration
                ),
                lambda predictor: predictor.predict_rows,
                rows[:SINGLE_ROW_CHECK],
                expected[:SINGLE_ROW_CHECK],
                "single-row predictions",
                SingleRowError,
            )
            if self.decl.serving.compiled_trees:
                threads = model.batch_threads or usable_cores()
                model.compiled, model.compiled_note = checked(
                    lambda: compile_forest(model.model_file, COMPILED_TREES_CACHE, threads),
                    lambda forest: forest.predict,
                    rows,
                    expected,
                    "compiled trees",
                    CompileError,
                )
        except Exception as err:  # reading the rows, a LightGBM error: Booster.predict keeps serving, the status says why
            log.warning("faster predictors for %s v%s not checked: %s", self.decl.name, model.version, err)
            note = f"not checked: {type(err).__name__}: {str(err)[:200]}"
            if model.single_row is None:
                model.single_row_note = note
            if self.decl.serving.compiled_trees and model.compiled is None:
                model.compiled_note = note

    def _check_rows(self, model: LoadedModel, limit: int = 20_000) -> np.ndarray:
        """Feature rows of the latest partition, in the model's column order: what faster predictors are checked on."""
        delta = self.settings.delta()
        days = delta.partitions(self.decl.name, FEATURES)
        frame = delta.read_partitions(self.decl.name, FEATURES, days[-1:]) if days else None
        if frame is None or frame.height == 0:
            return np.empty((0, len(model.feature_columns)))
        return model.matrix(frame.head(limit))

    def predict(
        self, typed: CheckedRows | pl.DataFrame, request_id: str, received_at: float, role: str, served: bool, version: int | None = None
    ) -> dict:
        loaded = self.loaded  # one read: the whole request uses one version even if a swap lands meanwhile
        if loaded is None:
            raise NotReady(f"no {self.role} model loaded for pipeline {self.decl.name}")
        if version is not None and loaded.model.version != version:
            raise VersionNotHere(f"{self.role} serves v{loaded.model.version}, not v{version}")
        frame = request_frame([typed], self.schema)
        features = self.module.build(frame, loaded.reference, loaded.index)
        result = loaded.model.predict(features)
        self.logger.log(
            log_rows(
                features=self._with_subjects(features, frame),
                result=result,
                pipeline=self.decl.name,
                model_version=loaded.model.version,
                role=role,
                served=served,
                request_id=request_id,
                received_at=received_at,
            )
        )
        result["model_version"] = loaded.model.version
        return result

    async def infer(
        self,
        typed: CheckedRows | pl.DataFrame,
        request_id: str,
        received_at: float,
        role: str,
        served: bool,
        version: int | None = None,
        sent_at: float | None = None,
    ) -> dict:
        """The Serve path of `predict`: requests arriving together are featurized and predicted as one frame.

        `sent_at`: when the ingress handed the request over (canary and shadow). The hop from there to here is left out
        of the logged latency, which then measures this version as the champion's own answers measure it: a rollout's
        p99 guard compares the two, and the hop (4-7 ms of p50 by hand, against 1 ms for the whole champion answer)
        rolled healthy versions back under the default ratio of 2."""
        if sent_at is not None:
            received_at += max(0.0, time.time() - sent_at)
        answer = await self._batched((typed, request_id, received_at, role, served, version))
        if isinstance(answer, BaseException):
            raise answer
        return answer

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)
    async def _batched(self, items: list[tuple]) -> list:
        # no waiting for company: a lone request runs at once; requests that queued meanwhile form the next batch
        self.counts["batches"] += 1  # requests / batches: how many Serve's batch queue answers at once
        return await self._predicted(items)

    async def _predicted(self, items: list[tuple]) -> list:
        """`predict_many`, on the loop for a few rows, in a thread for many (INLINE_ROWS)."""
        if sum(len(item[0]) for item in items) <= INLINE_ROWS:
            return self.predict_many(items)
        return await asyncio.to_thread(self.predict_many, items)

    def predict_many(self, items: list[tuple]) -> list:
        """`predict` for many requests at once, one answer (a result or the exception to raise) per request.

        Features are a row-wise function of the records, so the requests' frames are stacked,
        featurized and predicted together, then split back; each request keeps its own id,
        role and latency in the prediction log. All of them use the one model version read here.
        """
        loaded = self.loaded
        if loaded is None:
            return [NotReady(f"no {self.role} model loaded for pipeline {self.decl.name}")] * len(items)
        answers: list = [None] * len(items)
        take = []
        for i, (_, _, _, _, _, version) in enumerate(items):
            if version is not None and loaded.model.version != version:
                answers[i] = VersionNotHere(f"{self.role} serves v{loaded.model.version}, not v{version}")
            else:
                take.append(i)
        if not take:
            return answers
        typed = [items[i][0] for i in take]
        clock = self.stage_times
        started = time.perf_counter()
        try:
            frame = request_frame(typed, self.schema)
        except Exception:  # frames of differing dtypes cannot stack: one at a time then
            for i in take:
                answers[i] = self._answer_one(loaded, items[i])
            return answers
        started = clock.record("frame", started)
        try:
            features = self.module.build(frame, loaded.reference, loaded.index)
            started = clock.record("features", started)
            result = loaded.model.predict(features)
            started = clock.record("predict", started)
        except Exception as err:
            if len(take) > 1:  # one request's values broke the batch: alone, only that request fails
                log.warning("a batch of %d requests failed (%s: %s); answering them one at a time", len(take), type(err).__name__, err)
                for i in take:
                    answers[i] = self._answer_one(loaded, items[i])
                return answers
            self._log_failures(loaded, [items[i] for i in take], err)
            answers[take[0]] = err
            return answers
        sizes = [len(t) for t in typed]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        for k, i in enumerate(take):
            a, b = offsets[k], offsets[k + 1]
            answers[i] = {key: values[a:b] for key, values in result.items()}
            answers[i]["model_version"] = loaded.model.version
        self.logger.log_answered(self._answered(loaded, self._with_subjects(features, frame), result, [items[i] for i in take], sizes))
        clock.record("log", started)  # the answers split back and the batch handed to the log's writer
        return answers

    def _with_subjects(self, features: pl.DataFrame, frame: pl.DataFrame) -> pl.DataFrame:
        """The logged columns: the features, plus the declared subject columns (so `mlops erase` finds a
        person's predictions too); nothing is added when the declaration names none."""
        subjects = [c for c in self.decl.governance.subject_columns if c in frame.columns]
        if not subjects:
            return features
        return features.hstack([frame.get_column(c).alias(SUBJECT_PREFIX + c) for c in subjects])  # no query: a row's select cost more

    def _answer_one(self, loaded: Loaded, item: tuple) -> dict | BaseException:
        try:
            return self.predict(*item)
        except Exception as err:
            self._log_failures(loaded, [item], err)
            return err

    def _log_failures(self, loaded: Loaded, items: list[tuple], err: Exception) -> None:
        """A failed answer is logged too (one row per request, `error` set, unserved), so a rollout's error-rate
        guard sees it; a client's own mistake (RequestError) is not the model's failure and is left out."""
        if isinstance(err, (RequestError, VersionNotHere, NotReady)):
            return
        now = time.time()
        self.logger.log(
            pl.DataFrame(
                {
                    "request_id": [it[1] for it in items],
                    "logged_at": [datetime.fromtimestamp(now, UTC)] * len(items),
                    "pipeline": [self.decl.name] * len(items),
                    "model_version": [loaded.model.version] * len(items),
                    "role": [it[3] for it in items],
                    "served": [False] * len(items),
                    "latency_ms": [(now - it[2]) * 1000.0 for it in items],
                    "error": [f"{type(err).__name__}: {err}"[:300]] * len(items),
                },
                schema_overrides={"logged_at": pl.Datetime("us", "UTC"), "model_version": pl.Int64},
            )
        )

    def _answered(self, loaded: Loaded, columns: pl.DataFrame, result: dict, items: list[tuple], sizes: list[int]) -> Answered:
        """What the prediction log keeps of a batch: each request's own id, role, flags and arrival; the
        logger's writer thread builds the rows (`answered_rows`), off the request's path."""
        requests = tuple((it[1], it[3], it[4], it[2], n) for it, n in zip(items, sizes))
        return Answered(columns, result, self.decl.name, loaded.model.version, requests, time.time())

    def status(self) -> dict:
        loaded = self.loaded
        return {
            "role": self.role,
            "device": self.device,
            "ready": loaded is not None,
            "model_version": loaded.model.version if loaded else None,
            "task": loaded.model.task if loaded else None,
            "feature_columns": loaded.model.feature_columns if loaded else [],
            "reference": loaded.info if loaded else {},
            "reference_refresh": self.refresher.status(),
            "loads": self.loads,
            "polars_threads": pl.thread_pool_size(),
            "batch_threads": (loaded.model.batch_threads or usable_cores()) if loaded else None,  # LightGBM's, for large requests
            "openmp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            # Serve's default runs user code on a loop of its own thread; the replica groups turn that off (app.py)
            "user_code_in_separate_thread": os.environ.get("RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD", "1") != "0",
            "predictor": loaded.model.predictor if loaded else None,  # of large requests: lightgbm, tl2cgen or nvforest
            "compiled_trees": loaded.model.compiled_note if loaded else None,  # why they do not serve (yet), if declared
            # lone rows through LightGBM's single-row C API once checked identical (None), else why not (yet)
            "single_row": loaded.model.single_row_note if loaded else None,
            "prediction_log": self.logger.stats(),
            "replica": self.replica,
            # False while every version came with its model_source: this replica never paid MLflow's import
            "mlflow_imported": "mlflow" in sys.modules,
            "stage_ms": self.stage_times.snapshot(),  # totals since start: two readings give the work between them
        }

    def check_health(self) -> None:
        """Serve restarts a replica whose prediction logger died (its rows would pile up unseen)."""
        if not self.logger.alive():
            raise RuntimeError(f"prediction logger of {self.decl.name}/{self.role} stopped: {self.logger.last_error}")

    def flush_log(self) -> int:
        return self.logger.flush()

    # --- routing: the champion's CPU group is the application's ingress ---------------------------

    @property
    def challenger(self) -> DeploymentHandle | None:
        return self._peer(CHALLENGER_DEPLOYMENT)

    @property
    def champion_gpu(self) -> DeploymentHandle | None:
        return self._peer(CHAMPION_GPU_DEPLOYMENT) if self.gpu_share > 0 else None

    def _peer(self, deployment: str) -> DeploymentHandle | None:
        """A bound handle, or one looked up by name in `peers_app` the first time it is needed (the two
        applications deploy together, in either order); None while that application does not have it."""
        if deployment not in self._peers:
            try:
                self._peers[deployment] = serve.get_deployment_handle(deployment, app_name=self.peers_app)
            except RayServeException as err:
                log.warning("%s of %s is not deployed (yet): %s", deployment, self.peers_app, err)
                return None
        return self._peers[deployment]

    async def route(self, records: list[dict] | Columns, request_id: str, received_at: float, version: int | None = None) -> dict:
        """`_route` for a request that comes through a handle (the gateway's V1, pinned versions): counted like an
        HTTP request in `__call__`, so a lone one skips the batch queue too."""
        self._requests += 1
        try:
            return await self._route(records, request_id, received_at, version)
        finally:
            self._requests -= 1

    async def route_answer(
        self, records: list[dict] | Columns, request_id: str, received_at: float, version: int | None = None
    ) -> dict | RequestError | NotReady:
        """`route` for the gateway's handle: a refusal (a client's mistake, a version not served) comes back as the
        answer. Raised across the handle, Serve logged each as a failed request, tracebacks and all."""
        try:
            return await self.route(records, request_id, received_at, version)
        except (RequestError, NotReady) as refusal:
            return refusal

    async def infer_if_held(
        self, typed: CheckedRows | pl.DataFrame, request_id: str, received_at: float, role: str, served: bool, version: int
    ) -> dict | VersionNotHere | NotReady:
        """`infer` for a pinned request asked of each role in turn: "not here" is an answer, not a failure (Serve
        logged each as a failed request in the replica asked)."""
        try:
            return await self.infer(typed, request_id, received_at, role, served, version)
        except (VersionNotHere, NotReady) as elsewhere:
            return elsewhere

    async def _route(self, records: list[dict] | Columns, request_id: str, received_at: float, version: int | None = None) -> dict:
        """Type the records (V1) or columns (V2), pick who answers (champion, canary or a pinned version), mirror to the shadow."""
        # small requests are typed inline (the fast path takes ~0.2 ms, less than a hop to a worker thread);
        # large ones in a thread, so the replica keeps answering meanwhile
        if len(records) <= INLINE_ROWS:
            frame = self._typed(records)
        else:
            frame = await asyncio.to_thread(self._typed, records)
        if version is not None:
            return await self._pinned(frame, request_id, received_at, version)
        role = CHAMPION
        result = None
        if self.canary_share > 0 and self.rng.random() < self.canary_share and self.challenger is not None:
            role = "canary"
            try:
                result = await self.challenger.infer.remote(frame, request_id, received_at, "canary", True, sent_at=time.time())
            except NotReady:
                role = CHAMPION  # no challenger registered: the champion answers
            except RequestError:
                raise  # the client's mistake: the champion would refuse it the same way
            except (
                Exception
            ) as err:  # a failing canary costs its requests nothing: logged (the rollout guard reads it), then the champion answers
                role = CHAMPION
                self.counts["canary_failed"] += 1
                log.warning("canary answer to %s failed, the champion answers: %s", request_id, err)
        if result is None:
            result = await self._champion(frame, request_id, received_at, CHAMPION, True)
        if self.shadow and role == CHAMPION and self.challenger is not None:
            if len(self._background) >= self.decl.serving.traffic.shadow_max_in_flight:
                self.counts["shadow_dropped"] += 1  # a slow challenger must not pile up work in the champion
            else:
                task = asyncio.create_task(self._mirror(frame, request_id, received_at))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        self.counts[role] += 1
        result["role"] = role
        return result

    def _typed(self, records: list[dict] | Columns) -> CheckedRows | pl.DataFrame:
        started = time.perf_counter()
        frame = typed_request(records, self.schema)
        self.stage_times.record("typing", started)
        return frame

    def _decoded(self, raw: bytes, headers, schema: RequestSchema) -> Decoded:
        started = time.perf_counter()
        decoded = (decode_v1 if self.protocol == "v1" else decode_v2)(raw, headers, schema)
        self.stage_times.record("decode", started)
        return decoded

    def _champion(self, *request):
        """This replica answers, or the GPU group for its share of the requests."""
        if self.champion_gpu is not None and self.rng.random() < self.gpu_share:
            return self.champion_gpu.infer.remote(*request)
        return self._here(*request)

    async def _here(
        self, frame: CheckedRows | pl.DataFrame, request_id: str, received_at: float, role: str, served: bool, version: int | None = None
    ) -> dict:
        """`infer` in this replica; the only request in it is answered at once, without Serve's batch queue,
        which would hand it to its batching task and back with no company to wait for.

        One event-loop turn first lets requests that arrived meanwhile enter `__call__` or `route`: then this one
        is not alone and they batch, as under load. Canary and shadow requests to the challenger always take its
        queue."""
        item = (frame, request_id, received_at, role, served, version)
        if self._requests == 1:
            await asyncio.sleep(0)
        if self._requests != 1:
            return await self.infer(*item)
        self.counts["alone"] += 1  # answered without the batch queue (`routed` in the status)
        (answer,) = await self._predicted([item])
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def _pinned(self, frame: CheckedRows | pl.DataFrame, request_id: str, received_at: float, version: int) -> dict:
        """A request for one version (`/v2/models/{name}/versions/{v}/infer`): whichever role holds it answers. This
        replica, not the GPU group: during a swap the group may still hold the version before, and the request then
        fell through to the challenger and a 404 although this replica held the version asked for."""
        holders = [(CHAMPION, self._here)]
        if self.challenger is not None:
            holders.append((CHALLENGER, self.challenger.infer_if_held.remote))
        for role, answer in holders:
            try:
                result = await answer(frame, request_id, received_at, role, True, version)
            except (VersionNotHere, NotReady):
                continue
            if isinstance(result, (VersionNotHere, NotReady)):
                continue
            self.counts[f"pinned_{role}"] += 1
            result["role"] = role
            return result
        raise RequestError(
            f"version {version} of {self.decl.name} is not being served (only the champion and challenger are)", status=404, field="version"
        )

    async def _mirror(self, frame: CheckedRows | pl.DataFrame, request_id: str, received_at: float) -> None:
        try:
            await self.challenger.infer.remote(frame, request_id, received_at, "shadow", False, sent_at=time.time())
            self.counts["shadow"] += 1
        except NotReady:
            self.counts["shadow_skipped"] += 1
        except Exception as err:  # a failing shadow must never touch the served answer; it is counted and logged
            self.counts["shadow_failed"] += 1
            log.warning("shadow request %s failed: %s", request_id, err)

    async def __call__(self, request: Request) -> Response:
        """`POST /v2/models/{name}/infer` (or, in the V1 route's application, `POST /v1/models/{name}:predict`),
        taken straight from Serve's ingress (the application's route prefix): one Ray hand-off fewer than
        through the gateway, answered exactly as the gateway answers it."""
        v1 = self.protocol == "v1"
        route = predict_route(self.decl.name) if v1 else infer_route(self.decl.name)
        if request.url.path.rstrip("/") != route:  # the prefix's sub-paths are no endpoint
            return error(404, f"no endpoint at {request.url.path[:200]}; predictions are asked at POST {route}")
        if request.method != "POST":
            return post_only(request.method, request.url.path, "predict" if v1 else "infer")
        self._requests += 1
        try:
            answer = await answer_prediction(request, self.decl, self.schema, self._decoded, self._route)
        finally:
            self._requests -= 1
        if isinstance(answer, JSONResponse):
            return answer
        started = time.perf_counter()
        response = v1_predict_response(self.decl.name, *answer[:2]) if v1 else v2_infer_response(self.decl.name, *answer)
        self.stage_times.record("encode", started)
        return one_request_id(response, request)

    async def pipeline_status(self) -> dict:
        """The application's status as the ingress sees it: this champion replica, the challenger, the GPU group, traffic."""
        champion = self.status()
        challenger = await self.challenger.status.remote() if self.challenger is not None else None
        gpu = await self.champion_gpu.status.remote() if self.champion_gpu is not None else None
        v1 = await self._v1_route_status()
        return {
            "pipeline": self.decl.name,
            # ready when the champion answers on every route: V1's own replicas too, where the pipeline has them
            "ready": bool(champion["ready"]) and (v1 is None or bool(v1["champion"] and v1["champion"]["ready"])),
            "champion": champion,
            "challenger": challenger,
            "champion_gpu": gpu,
            "traffic": self._traffic(),
            "routed": dict(self.counts),
            "v1_route": v1,
            "checked_at": time.time(),
        }

    def route_status(self) -> dict:
        """This replica's model, traffic and what it routed: the V1 route's part of the pipeline's status."""
        return {"champion": self.status(), "traffic": self._traffic(), "routed": dict(self.counts)}

    def _traffic(self) -> dict:
        return {"canary_share": self.canary_share, "shadow": self.shadow, "gpu_share": self.gpu_share}

    async def _v1_route_status(self) -> dict | None:
        """The V1 route's champion group (one replica's view), where this pipeline application has one."""
        if self.protocol != "v2" or self.decl.serving.v1_route is None:
            return None
        try:
            if self._v1_route is None:  # looked up once: the status answers health checks, often
                self._v1_route = serve.get_app_handle(v1_app_name(self.decl.name))
            return await self._v1_route.route_status.remote()
        except Exception as err:  # not deployed (yet), or being replaced: reported as absent, with why
            return {"champion": None, "error": f"{type(err).__name__}: {str(err)[:200]}"}

    def close(self) -> None:
        """Write what the log has queued and remove the downloaded model files. Serve's graceful shutdown
        calls `__del__`; a server built in-process (the bench, tests) is closed by its owner: a loaded
        replica's heap is frozen out of the garbage collector (`freeze_heap`), so it is never collected and
        its model folder under the temp directory would outlive the process."""
        refresher = getattr(self, "refresher", None)
        if refresher is not None:
            refresher.close()
        logger = getattr(self, "logger", None)
        if logger is not None:
            logger.close()
        shutil.rmtree(getattr(self, "cache_dir", ""), ignore_errors=True)

    def __del__(self):
        self.close()
