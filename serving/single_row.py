"""One row predicted through LightGBM's single-row C API, set up once per loaded version.

`Booster.predict` parses its parameters, builds a predictor and checks its input on every call: for one
row of the bench's flights model (200 trees) about 26 µs in a warm loop, against 11 µs through
`LGBM_BoosterPredictForMatSingleRowFast`, whose configuration is made once (`...FastInit`); with 8 MB
touched between calls (a served request meets the code cold) 35 against 16 µs. A lone row is what a
champion answers at one client, so a CPU replica predicts one-row requests this way, and only after it
answered exactly what `Booster.predict` answers on the check rows (the latest features partition).
Anything else keeps `Booster.predict`, with the reason in the status.

The library is LightGBM's own, loaded from the installed package by its public C API (`c_api.h`); the
booster is made from the same model file, so nothing of the Python package's private state is used.
"""

from __future__ import annotations

import ctypes
import threading
import weakref
from pathlib import Path

import numpy as np

C_API_PREDICT_NORMAL = 0  # c_api.h: the transformed output (probabilities for classifiers), as Booster.predict
C_API_DTYPE_FLOAT64 = 1
UNCHECKED = "not checked yet"  # a loaded version's single-row status until its check has run


class SingleRowError(RuntimeError):
    """LightGBM's library could not be found or refused the model (the replica keeps Booster.predict)."""


def lightgbm_library() -> ctypes.CDLL:
    """LightGBM's own library, as the installed package loaded it (its public C API, `c_api.h`)."""
    import lightgbm

    found = sorted((Path(lightgbm.__file__).parent / "lib").glob("lib_lightgbm.*"))
    if not found:
        raise SingleRowError(f"no lib_lightgbm in {Path(lightgbm.__file__).parent / 'lib'}")
    lib = ctypes.CDLL(str(found[0]))  # already loaded by `import lightgbm`: the same library, not a second copy
    lib.LGBM_GetLastError.restype = ctypes.c_char_p
    lib.LGBM_BoosterPredictForMatSingleRowFast.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_int64),
        ctypes.POINTER(ctypes.c_double),
    ]
    return lib


def _check(lib: ctypes.CDLL, code: int, doing: str) -> None:
    if code != 0:
        raise SingleRowError(f"LightGBM {doing}: {lib.LGBM_GetLastError().decode(errors='replace')}")


def _free(lib: ctypes.CDLL, booster: ctypes.c_void_p, fast: ctypes.c_void_p) -> None:
    if fast.value:
        lib.LGBM_FastConfigFree(fast)
    lib.LGBM_BoosterFree(booster)


class SingleRowPredictor:
    """`predict(row)` answers what `Booster.predict(row[None, :], num_threads=1)` answers, for one row.

    One thread at a time uses the fast configuration (it keeps buffers of its own); a caller that finds
    it busy gets None and uses `Booster.predict`. LightGBM's handles are freed with the object."""

    def __init__(self, model_file: str, num_features: int, outputs: int, num_iteration: int = -1):
        self._lib = lib = lightgbm_library()
        booster, fast, iterations = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_int()
        _check(
            lib,
            lib.LGBM_BoosterCreateFromModelfile(str(model_file).encode(), ctypes.byref(iterations), ctypes.byref(booster)),
            "loading the model",
        )
        self._handles = weakref.finalize(self, _free, lib, booster, fast)
        init = lib.LGBM_BoosterPredictForMatSingleRowFastInit
        _check(
            lib,
            init(booster, C_API_PREDICT_NORMAL, 0, num_iteration, C_API_DTYPE_FLOAT64, num_features, b"num_threads=1", ctypes.byref(fast)),
            "setting up single-row prediction",
        )
        self._fast = fast
        self.num_features = num_features
        self._out = np.empty(outputs, dtype=np.float64)
        self._out_ptr = self._out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))
        self._length = ctypes.c_int64()
        self._lock = threading.Lock()

    def predict(self, row: np.ndarray) -> np.ndarray | None:
        """The row's outputs (one, or one per class), or None while another thread is predicting."""
        row = np.ascontiguousarray(row, dtype=np.float64)
        if row.shape != (self.num_features,):
            raise ValueError(f"one row of {self.num_features} features expected, got shape {row.shape}")
        if not self._lock.acquire(blocking=False):
            return None
        try:
            code = self._lib.LGBM_BoosterPredictForMatSingleRowFast(self._fast, row.ctypes.data, ctypes.byref(self._length), self._out_ptr)
            _check(self._lib, code, "predicting a row")
            return self._out.copy()
        finally:
            self._lock.release()

    def predict_rows(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Every row of `x`, one at a time, in `Booster.predict`'s shape: how it is checked against it."""
        out = np.empty((x.shape[0], self._out.shape[0]))
        for i in range(x.shape[0]):
            got = self.predict(x[i])
            if got is None:
                raise SingleRowError("in use by another thread while being checked")
            out[i] = got
        return out.reshape(shape)
