"""Runs one pipeline's training job in its own process: `python -m tests.pipelines.train_worker HOME PIPELINE`.

Used to train two pipelines at once against one MLflow SQLite store, as two
Dagster run workers would; exits non-zero when the run fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

import dagster as dg

from tests.pipelines.classifier_features import declaration
from tests.support.platform import Platform


def main(home: str, pipeline: str) -> int:
    root = Path(home)
    decls = [declaration("binary", fmt="csv"), declaration("multiclass", fmt="parquet")]
    instance_dir = root / f"dagster_{pipeline}"
    instance_dir.mkdir(exist_ok=True)
    with dg.instance_for_test(temp_dir=str(instance_dir)) as instance:
        result = Platform(root, decls, instance).run(f"{pipeline}_train", raise_on_error=False)
    print(f"{pipeline}: {'success' if result.success else 'FAILED'}", flush=True)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
