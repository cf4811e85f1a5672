"""CI, in an environment uv made (no setuptools, so no pkg_resources): the demo's landing and one training.

Run with that environment's Python: lands 21 flights days, loads the reference tables, ingests each
day and trains, gates and promotes a first model, all through the real definitions, in a temp home.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from datetime import date, timedelta
from pathlib import Path


def main() -> int:
    assert importlib.util.find_spec("pkg_resources") is None, "this environment has pkg_resources: not what the smoke test is for"
    home = Path(tempfile.mkdtemp(prefix="mlops-uv-smoke-"))
    os.environ["MLOPS_HOME"] = str(home)
    import dagster as dg

    from mlops_assets.core.declaration import PACKAGED_PIPELINES, derive_declaration, load_declaration
    from mlops_assets.core.home import MlopsHome
    from mlops_assets.definitions import build_definitions
    from mlops_assets.defs.flights.upstream import land_days
    from resources.defaults import model_resources, serving_resources
    from resources.delta_lake import DeltaLakeResource
    from resources.landing_zone import LandingZoneResource

    packaged = load_declaration(PACKAGED_PIPELINES / "flights" / "defs.yaml")
    decl = derive_declaration(
        packaged, "flights (uv smoke)", training={"window_days": 20, "validation_days": 4, "num_boost_round": 30}, gates={"holdout_days": 4}
    )
    landing = LandingZoneResource(root=str(home / "landing"))
    resources = {
        "landing": landing,
        "delta": DeltaLakeResource(root=str(home / "delta")),
        **model_resources(MlopsHome(home)),
        **serving_resources(MlopsHome(home)),
    }
    defs = build_definitions([decl], resources=resources)
    land_days(decl, landing, date(2013, 1, 1), 21)
    (home / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
        assert defs.resolve_job_def("flights_reference").execute_in_process(instance=instance).success
        for i in range(21):
            day = (date(2013, 1, 1) + timedelta(days=i)).isoformat()
            assert defs.resolve_job_def("flights_ingest").execute_in_process(instance=instance, partition_key=day).success
        result = defs.resolve_job_def("flights_train").execute_in_process(instance=instance)
    assert result.success
    decision = result.asset_materializations_for_node("flights__promotion")[0].metadata["action"].value
    print(f"uv smoke: landed and ingested 21 days, trained and {decision} a first model in {home}", flush=True)
    return 0 if decision == "promote" else 1


if __name__ == "__main__":
    sys.exit(main())
