"""The processes `mlops bench reliability` kills: one platform step run as Dagster runs it, in a process of its
own, that SIGKILLs itself at a named point (the unit's edge is the kill, everything else is the real step).

    python -m mlops_assets.cli.bench.fault_child '{"kind": "ingest", "root": ..., "declaration": ..., ...}'

Kinds: ``ingest`` (one partition; kill points ``before_raw_commit``, ``between_raw_and_quarantine``,
``before_features_commit``, or none for a kill from outside at a random moment), ``train`` (``mid_training``
at a boosting round, ``after_registration`` before the gates), ``promote`` (one version, started at a
shared instant so two of them race; exit 3 when the promotion was refused).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

STALE_EXIT = 3


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_before_write_of(table: str) -> None:
    from resources.delta_lake import DeltaLakeResource

    write = DeltaLakeResource.write_partition_stream  # every partition write goes through it

    def write_or_die(self, pipeline, name, *args, **kwargs):
        if name == table:
            die()
        return write(self, pipeline, name, *args, **kwargs)

    DeltaLakeResource.write_partition_stream = write_or_die  # type: ignore[method-assign]


def _kill_mid_training(at_round: int = 3) -> None:
    import lightgbm as lgb

    train = lgb.train

    def kill_at(env) -> None:
        if env.iteration + 1 >= at_round:
            die()

    def train_and_die(*args, callbacks=None, **kwargs):
        return train(*args, callbacks=[*(callbacks or []), kill_at], **kwargs)

    lgb.train = train_and_die


def _kill_before_gates() -> None:
    from mlops_assets.models import gates

    gates.evaluate = lambda *a, **k: die()  # type: ignore[assignment]


KILL_POINTS = {
    "before_raw_commit": lambda: _kill_before_write_of("raw"),
    "between_raw_and_quarantine": lambda: _kill_before_write_of("quarantine"),
    "before_features_commit": lambda: _kill_before_write_of("features"),
    "mid_training": _kill_mid_training,
    "after_registration": _kill_before_gates,
}


def run(spec: dict) -> int:
    import dagster as dg

    from mlops_assets.cli.bench.serving_bench import home_definitions
    from mlops_assets.core.declaration import derive_declaration, load_declaration

    root = Path(spec["root"])
    decl = load_declaration(Path(spec["declaration"]))
    if spec.get("policy"):
        decl = derive_declaration(decl, f"{decl.name} ({spec['policy']})", promotion={"policy": spec["policy"]})
    if spec["kind"] == "promote":
        return _promote(root, decl, spec)
    defs, _ = home_definitions(root, decl)
    if spec.get("kill_at"):
        KILL_POINTS[spec["kill_at"]]()
    job = defs.resolve_job_def(f"{decl.name}_{'ingest' if spec['kind'] == 'ingest' else 'train'}")
    print("running", flush=True)  # the parent's cue for a kill at a random moment
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(instance=instance, partition_key=spec.get("partition"), raise_on_error=False)
    return 0 if result.success else 1


def _promote(root: Path, decl, spec: dict) -> int:
    from mlops_assets.core.home import MlopsHome
    from mlops_assets.core.names import MLFLOW_RESOURCE
    from mlops_assets.models.promotion import StaleGates, promote_after_gates
    from resources.defaults import model_resources
    from resources.delta_lake import DeltaLakeResource

    home = MlopsHome(root)
    registry = model_resources(home)[MLFLOW_RESOURCE]
    delta = DeltaLakeResource(root=str(home.delta))
    time.sleep(max(0.0, spec["at"] - time.time()))
    try:
        decision = promote_after_gates(decl, delta, registry, str(spec["version"]), actor=f"bench:{os.getpid()}")
    except StaleGates as err:
        print(err, flush=True)
        return STALE_EXIT
    print(decision.message, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run(json.loads(sys.argv[1])))
