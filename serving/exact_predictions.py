"""A faster predictor serves only where it answers exactly what `Booster.predict` answers.

Compiled trees (large requests) and LightGBM's single-row C API (lone rows) are each checked against
`Booster.predict` on the same rows when a version loads; this is the comparison both use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np

Predictor = TypeVar("Predictor")


def identical(predict: Callable[[np.ndarray, tuple[int, ...]], np.ndarray], x: np.ndarray, expected: np.ndarray, what: str) -> str | None:
    """None when `predict(x, expected.shape)` is exactly `expected` (NaN where it is NaN); otherwise why not."""
    if x.shape[0] == 0:
        return f"no rows to check the {what} on"
    got = predict(x, expected.shape)
    if got.shape != expected.shape:
        return f"{what} answer shape {got.shape}, LightGBM {expected.shape}"
    differ = int(np.sum(~((got == expected) | (np.isnan(got) & np.isnan(expected)))))
    if differ:
        return f"{what} differ from LightGBM on {differ} of {x.shape[0]} rows (up to {float(np.nanmax(np.abs(got - expected))):.3g})"
    return None


def checked(
    build: Callable[[], Predictor],
    predict: Callable[[Predictor], Callable[[np.ndarray, tuple[int, ...]], np.ndarray]],
    x: np.ndarray,
    expected: np.ndarray,
    what: str,
    failure: type[Exception],
) -> tuple[Predictor | None, str | None]:
    """What `build()` makes, with None as the reason, when it predicts `expected` on `x` exactly; otherwise
    None and why not (a `failure` raised while building or predicting is the reason)."""
    try:
        predictor = build()
        note = identical(predict(predictor), x, expected, what)
    except failure as err:
        return None, str(err)
    return (predictor, None) if note is None else (None, note)
