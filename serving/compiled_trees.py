"""Compiled trees: a model version's LightGBM forest as a shared library (tl2cgen), used only where it is exact.

Declared per pipeline (`serving.compiled_trees`), optional (`pip install -e '.[compiled]'`, and a C
compiler). A replica keeps answering with LightGBM while the library is built once per model file
(cached by the file's hash under `cache_root`, one builder at a time across replicas), then checked
against `Booster.predict` on the latest day of the features table; only a library whose every
prediction there is identical to LightGBM's serves large requests. Anything else (no compiler, a
failed build, one differing prediction) leaves LightGBM serving, with the reason in the status.
On the bench's flights model, 10,000 rows predict about 1.7x faster than LightGBM's (timed by hand);
a single row is no faster, so small requests keep LightGBM either way.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock


class CompileError(RuntimeError):
    """The forest could not be compiled or loaded (no tl2cgen, no C compiler, a failed build)."""


@dataclass
class CompiledForest:
    """A loaded tl2cgen library: `predict` answers exactly what `Booster.predict` answers, in its shape."""

    _predictor: object

    def predict(self, x: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
        import tl2cgen

        out = np.asarray(self._predictor.predict(tl2cgen.DMatrix(np.ascontiguousarray(x, dtype=np.float64), dtype="float64")))  # type: ignore[attr-defined]
        return out.reshape(shape if shape is not None else (x.shape[0], -1))


def library_path(model_file: str, cache_root: str) -> Path:
    digest = hashlib.sha256(Path(model_file).read_bytes()).hexdigest()[:24]
    return Path(cache_root) / f"forest-{digest}.so"


def _import_tl2cgen(threads: int):
    """tl2cgen's own OpenMP reads OMP_NUM_THREADS once, as it loads, and refuses a predictor of more threads. Ray sets
    it to a replica's CPU share (one for half a core), so tl2cgen loads seeing the threads large requests are
    declared (LightGBM's OpenMP, loaded before, keeps its own setting, and is always given its threads)."""
    if "tl2cgen" in sys.modules:
        import tl2cgen

        return tl2cgen
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(max(1, threads))
    try:
        import tl2cgen
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before
    return tl2cgen


def compile_forest(model_file: str, cache_root: str, threads: int) -> CompiledForest:
    """The library for this LightGBM text file, built unless a replica built it already."""
    try:
        import treelite

        tl2cgen = _import_tl2cgen(threads)
    except ImportError as err:
        raise CompileError(f"compiled trees need tl2cgen and treelite (pip install -e '.[compiled]'): {err}") from None
    path = library_path(model_file, cache_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.exists():
            partial = path.with_suffix(f".{os.getpid()}.so")
            try:
                model = treelite.frontend.load_lightgbm_model(model_file)
                tl2cgen.export_lib(model, toolchain="gcc", libpath=str(partial), params={"parallel_comp": max(1, threads)}, nthread=1)
                partial.replace(path)  # whole or absent: a killed build leaves no library behind
            except Exception as err:
                partial.unlink(missing_ok=True)
                raise CompileError(f"building {path.name} failed: {str(err).strip().splitlines()[-1][:200]}") from None
    try:
        return CompiledForest(tl2cgen.Predictor(str(path), nthread=max(1, threads)))
    except Exception as err:
        raise CompileError(f"loading {path.name} failed: {str(err).strip().splitlines()[-1][:200]}") from None
