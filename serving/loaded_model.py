"""Loading a registered model version the way the registry contract stores it.

A version is a LightGBM text model (`model.lgb`, loaded without executing code)
plus tags that say how to call it: `mlops.feature_columns` (the column order),
`mlops.task` and `mlops.classes`. Aliases (`champion`, `challenger`) are resolved
to a version number first, so every answer can say which version made it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import polars as pl

from mlops_assets.core.lookups import FEW_ROWS
from mlops_assets.core.names import CLASSES_TAG, FEATURE_COLUMNS_TAG, TASK_TAG
from resources.registered_models import ModelSource, model_source
from serving.compiled_trees import CompiledForest
from serving.gpu import gpu_predict, load_gpu_forest
from serving.single_row import UNCHECKED, SingleRowPredictor

if TYPE_CHECKING:  # lightgbm where a model is loaded: the champion sensor imports this module in Dagster
    import lightgbm as lgb

log = logging.getLogger(__name__)
TASKS = ("regression", "binary", "multiclass")
SMALL_BATCH = 1_000  # rows below which prediction runs on one thread


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), whatever OMP_NUM_THREADS says."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class ModelLoadError(RuntimeError):
    """A registered version that cannot be served (missing file, missing or bad tags)."""


@dataclass
class LoadedModel:
    """One model version ready to predict on feature frames."""

    name: str
    version: int
    task: str
    feature_columns: list[str]
    classes: list = field(default_factory=list)
    booster: lgb.Booster | None = None
    model_file: str = ""
    run_id: str = ""
    device: str = "cpu"
    local_dir: str = ""
    batch_threads: int = 0  # threads for SMALL_BATCH rows or more (the replica group's `batch_threads`); 0: usable_cores()
    compiled: CompiledForest | None = None  # set once checked identical to LightGBM (serving.compiled_trees)
    compiled_note: str | None = None  # why the compiled trees do not serve (yet), for the status
    single_row: SingleRowPredictor | None = None  # set once checked identical to LightGBM (serving.single_row)
    single_row_note: str | None = UNCHECKED  # why lone rows are not predicted through it (yet), for the status
    _gpu = None  # nvforest ForestInference when device == "gpu"

    def matrix(self, features: pl.DataFrame) -> np.ndarray:
        missing = [c for c in self.feature_columns if c not in features.columns]
        if missing:
            raise ModelLoadError(f"model {self.name} v{self.version} needs features the feature code does not build: {missing}")
        if features.columns == self.feature_columns and all(d.is_integer() or d.is_float() for d in features.dtypes):
            if features.height <= FEW_ROWS:
                # a few rows through Python values (nulls as NaN): polars' to_numpy of mixed types wakes its
                # thread pool, which between requests has gone to sleep (about 0.07 ms a request, by hand)
                return np.array(features.rows(), dtype=np.float64).reshape(features.height, features.width)
            # already in the model's order: polars' own conversion to the numeric supertype (nulls as NaN)
            # equals casting each column to Float64, without a select and a cast per column (0.35 ms a row)
            return features.to_numpy().astype(np.float64, copy=False)
        return features.select(self.feature_columns).cast(pl.Float64).to_numpy()

    def raw_predict(self, features: pl.DataFrame) -> np.ndarray:
        """Regression values, or class probabilities (n x k; binary gives n x 2)."""
        x = self.matrix(features)
        if self.device == "gpu":
            return gpu_predict(self._gpu, x, self.task)
        # one thread below SMALL_BATCH rows: OpenMP's fork/join costs more than the trees (0.2 ms vs 0.04 ms for
        # one row on 2 busy cores), and replicas, not threads, are what serves concurrent requests. A large batch
        # takes the declared threads: OpenMP's default in a Ray replica is its CPU share (one for half a core),
        # which predicted a 10,000-row request on one core (`mlops bench serving`, batch 10k)
        large, compiled, single_row = x.shape[0] >= SMALL_BATCH, self.compiled, self.single_row
        out = None
        try:
            if large and compiled is not None:
                out = compiled.predict(x, self.output_shape(x.shape[0]))
            elif x.shape[0] == 1 and single_row is not None:  # a lone row: LightGBM's single-row C API, set up once
                lone = single_row.predict(x[0])  # None while another thread predicts through it: Booster.predict then
                out = None if lone is None else lone.reshape(self.output_shape(1))
        except Exception as err:  # a faster predictor failing on a request costs that request nothing
            self._drop_faster(compiled if large else single_row, err)
        if out is None:
            threads = (self.batch_threads or usable_cores()) if large else 1
            out = np.asarray(self.booster.predict(x, num_threads=threads))  # type: ignore[union-attr]
        if self.task == "binary":
            return np.column_stack([1.0 - out, out])
        return out

    def _drop_faster(self, predictor: object, err: Exception) -> None:
        """Retire a faster predictor that raised while answering: Booster.predict answers this request and every
        later one of this version, and the status says why (a library error must not fail requests one by one)."""
        note = f"failed while serving: {type(err).__name__}: {str(err)[:200]}"
        log.warning("%s v%s: %s; Booster.predict serves instead", self.name, self.version, note)
        if predictor is not None and predictor is self.compiled:
            self.compiled, self.compiled_note = None, note
        elif predictor is not None and predictor is self.single_row:
            self.single_row, self.single_row_note = None, note

    def output_shape(self, rows: int) -> tuple[int, ...]:
        """What `Booster.predict` answers: a value per row, or a probability per class for multiclass."""
        return (rows, len(self.classes)) if self.task == "multiclass" else (rows,)

    @property
    def predictor(self) -> str:
        return "nvforest" if self.device == "gpu" else "tl2cgen" if self.compiled is not None else "lightgbm"

    def predict(self, features: pl.DataFrame) -> dict:
        """JSON-ready predictions: `predictions` always, plus `labels`/`probabilities` for classifiers."""
        raw = self.raw_predict(features)
        if self.task == "regression":
            return {"predictions": np.asarray(raw, dtype=np.float64).tolist()}
        probs = np.asarray(raw, dtype=float)
        labels = [self.classes[i] for i in probs.argmax(axis=1)]
        if self.task == "binary":
            return {"predictions": [float(p) for p in probs[:, 1]], "labels": labels, "probabilities": probs.tolist()}
        return {"predictions": labels, "labels": labels, "probabilities": probs.tolist()}


def _tag_list(tags: dict, key: str, name: str, version: int) -> list:
    raw = tags.get(key)
    if raw is None:
        return []
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise ModelLoadError(f"model {name} v{version}: tag {key} is not JSON: {raw!r}") from None
    if not isinstance(value, list):
        raise ModelLoadError(f"model {name} v{version}: tag {key} must be a JSON list")
    return value


def registered_source(tracking_uri: str, name: str, version: int) -> ModelSource:
    """The registry's `ModelSource` of `<name>/<version>`, or ModelLoadError naming what is missing."""
    from mlflow.exceptions import MlflowException

    try:
        return model_source(tracking_uri, name, int(version))
    except LookupError as err:
        raise ModelLoadError(str(err)) from None
    except MlflowException as err:
        raise ModelLoadError(f"model {name} has no version {version}: {err.message}") from None


def load_version(tracking_uri: str, name: str, version: int, device: str = "cpu", cache_dir: str | None = None) -> LoadedModel:
    """Look `<name>/<version>` up in the registry and load its LightGBM text file (never a pickle)."""
    return load_source(name, registered_source(tracking_uri, name, version), device, cache_dir, tracking_uri)


def load_source(name: str, source: ModelSource, device: str = "cpu", cache_dir: str | None = None, tracking_uri: str = "") -> LoadedModel:
    """Load a version from where the registry keeps its files (`ModelSource`). A local artifact store is read
    directly, with no MLflow client; any other store is downloaded through MLflow. The model file is copied
    into a folder of this model's own (`local_dir`, removed when the version is swapped out)."""
    version, tags = source.version, dict(source.tags)
    task = tags.get(TASK_TAG, "regression")
    if task not in TASKS:
        raise ModelLoadError(f"model {name} v{version}: tag {TASK_TAG} is {task!r}, expected one of {TASKS}")
    dst = tempfile.mkdtemp(prefix=f"{name}-v{version}-", dir=cache_dir)
    try:
        return _load_file(name, version, task, tags, source.run_id, device, dst, _fetch(name, source, dst, tracking_uri))
    except BaseException:
        shutil.rmtree(dst, ignore_errors=True)  # a version that cannot be served leaves no download behind
        raise


def _local_folder(uri: str) -> Path | None:
    """The folder a `file:` URI (or a plain path) names, when it exists on this host."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file") or parsed.netloc not in ("", "localhost"):
        return None
    folder = Path(url2pathname(parsed.path))
    return folder if folder.is_dir() else None


def _fetch(name: str, source: ModelSource, dst: str, tracking_uri: str) -> Path:
    """The version's LightGBM text file, copied into `dst`."""
    folder = _local_folder(source.artifact_uri)
    if folder is not None:
        found = _model_file(folder, f"model {name} v{source.version}", f"in {source.artifact_uri}")
        return Path(shutil.copy2(found, Path(dst) / found.name))
    import mlflow
    from mlflow.exceptions import MlflowException

    if tracking_uri:  # an `mlflow-artifacts:` location is served by the tracking server
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=source.artifact_uri, dst_path=dst)
    except MlflowException as err:
        raise ModelLoadError(f"model {name} v{source.version}: cannot download artifacts: {err.message}") from None
    return _model_file(Path(local), f"model {name} v{source.version}", "in its artifacts")


def _model_file(folder: Path, model: str, where: str) -> Path:
    """The LightGBM text file of a version's artifact folder (the first by name, should there be several)."""
    files = sorted(folder.rglob("*.lgb"))
    if not files:
        raise ModelLoadError(f"{model} has no LightGBM text file (*.lgb) {where}")
    return files[0]


def _load_file(name: str, version: int, task: str, tags: dict, run_id: str, device: str, dst: str, model_file: Path) -> LoadedModel:
    import lightgbm as lgb

    booster = lgb.Booster(model_file=str(model_file))
    columns = _tag_list(tags, FEATURE_COLUMNS_TAG, name, version) or booster.feature_name()
    if list(columns) != booster.feature_name():
        raise ModelLoadError(
            f"model {name} v{version}: tag {FEATURE_COLUMNS_TAG} {columns} differs from the booster's features {booster.feature_name()}"
        )
    classes = _tag_list(tags, CLASSES_TAG, name, version)
    if task != "regression" and not classes:
        raise ModelLoadError(f"model {name} v{version}: a {task} model needs the {CLASSES_TAG} tag")
    model = LoadedModel(name, version, task, list(columns), classes, booster, str(model_file), run_id, device, dst)
    if device == "gpu":
        model._gpu = load_gpu_forest(str(model_file), task)
    return model
