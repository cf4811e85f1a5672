"""A declared schema with every check kind, and rows for it: shared by the validation tests."""

from __future__ import annotations

from datetime import UTC, datetime

from mlops_assets.core.declaration import SchemaSpec

SCHEMA = SchemaSpec.model_validate(
    {
        "unique": ["site", "n"],
        "columns": {
            "site": {"type": "str", "allowed": ["a", "b", "c"]},
            "n": {"type": "int32", "min": 1, "max": 100},
            "small": {"type": "int8", "nullable": True, "min": -5, "max": 5},
            "x": {"type": "float64", "min": -1.5, "max": 2.5},
            "y": {"type": "float64", "nullable": True, "min": 0, "max": 10},
            "tag": {"type": "str", "nullable": True, "allowed": ["p", "q"]},
            "code": {"type": "int16", "allowed": [1, 2, 3]},
            "flag": {"type": "bool", "nullable": True},
            "when": {"type": "datetime"},
            "free": {"type": "str", "nullable": True},
        },
    }
)
T0 = datetime(2024, 3, 1, tzinfo=UTC)


def _row(i: int, **over) -> dict:
    row = {
        "site": "abc"[i % 3],
        "n": i // 3 + 1,
        "small": i % 5,
        "x": 0.5,
        "y": 1.0,
        "tag": "p",
        "code": 1 + i % 3,
        "flag": True,
        "when": T0,
        "free": f"r{i}",
    }
    row.update(over)
    return row
