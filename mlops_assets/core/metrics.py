"""Quality metrics per task, with the direction that counts as better.

Computed with numpy here, not by LightGBM, so training, gates and `mlops
reproduce` score a model the same way whatever objective it was trained with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Task = str  # "regression" | "binary" | "multiclass"


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    fn: Callable[[np.ndarray, np.ndarray], float]  # (labels, predictions) -> value

    def passes_floor(self, value: float, bound: float) -> bool:
        return value >= bound if self.higher_is_better else value <= bound

    def regression_limit(self, champion: float, tolerance: float) -> float:
        """The worst challenger value still within `tolerance` (relative) of the champion."""
        slack = abs(champion) * tolerance
        return champion - slack if self.higher_is_better else champion + slack

    def within(self, challenger: float, champion: float, tolerance: float) -> bool:
        limit = self.regression_limit(champion, tolerance)
        return challenger >= limit if self.higher_is_better else challenger <= limit


def _mae(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(np.abs(y - p)))


def _rmse(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.sqrt(np.mean((y - p) ** 2)))


def _r2(y: np.ndarray, p: np.ndarray) -> float:
    total = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - p) ** 2)) / total if total > 0 else 0.0


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half)."""
    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), dtype=float)
    sorted_p = p[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _binary_logloss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-15, 1 - 1e-15)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _binary_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((p >= 0.5).astype(int) == y))


def _multi_logloss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-15, 1.0)
    return float(-np.mean(np.log(p[np.arange(len(y)), y.astype(int)])))


def _multi_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(np.argmax(p, axis=1) == y))


def _macro_f1(y: np.ndarray, p: np.ndarray) -> float:
    pred = np.argmax(p, axis=1)
    scores = []
    for k in range(p.shape[1]):
        tp = float(np.sum((pred == k) & (y == k)))
        fp = float(np.sum((pred == k) & (y != k)))
        fn = float(np.sum((pred != k) & (y == k)))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


METRICS: dict[Task, dict[str, Metric]] = {
    "regression": {
        "mae": Metric("mae", False, _mae),
        "rmse": Metric("rmse", False, _rmse),
        "r2": Metric("r2", True, _r2),
    },
    "binary": {
        "auc": Metric("auc", True, _auc),
        "logloss": Metric("logloss", False, _binary_logloss),
        "accuracy": Metric("accuracy", True, _binary_accuracy),
    },
    "multiclass": {
        "logloss": Metric("logloss", False, _multi_logloss),
        "accuracy": Metric("accuracy", True, _multi_accuracy),
        "macro_f1": Metric("macro_f1", True, _macro_f1),
    },
}


# compared against the champion when the declaration names no floors
def _positive_rate(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean(p >= 0.5))


def _tpr(y: np.ndarray, p: np.ndarray) -> float:
    pos = y == 1
    return float(np.mean(p[pos] >= 0.5)) if pos.any() else float("nan")


# rates a fairness gate compares across groups of a binary model (not quality metrics: no direction)
RATE_METRICS: dict[str, Metric] = {"positive_rate": Metric("positive_rate", True, _positive_rate), "tpr": Metric("tpr", True, _tpr)}

PRIMARY_METRIC: dict[Task, str] = {"regression": "mae", "binary": "auc", "multiclass": "logloss"}
# the live metric of batch scores (a value or a predicted label per row; no probabilities kept)
LIVE_PRIMARY_METRIC: dict[Task, str] = {"regression": "mae", "binary": "accuracy", "multiclass": "accuracy"}


def live_metrics(task: Task, labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Batch-scored predictions against the labels that arrived later: MAE and RMSE for regression,
    accuracy of the predicted label otherwise (labels compared as text, as the scores hold them)."""
    if task == "regression":
        err = predictions.astype(np.float64) - labels.astype(np.float64)
        return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2)))}
    return {"accuracy": float(np.mean(labels.astype(str) == predictions.astype(str)))}


ALL_METRIC_NAMES: frozenset[str] = frozenset(n for by_name in METRICS.values() for n in by_name)


def metric(task: Task, name: str) -> Metric:
    known = METRICS[task]
    if name not in known:
        raise ValueError(f"unknown metric '{name}' for a {task} model; known: {', '.join(sorted(known))}")
    return known[name]


def score(task: Task, labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Every metric of the task (labels are class indexes for classification)."""
    return {name: m.fn(labels, predictions) for name, m in METRICS[task].items()}
