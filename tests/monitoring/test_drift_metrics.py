"""What a drift check says it compared against."""

from types import SimpleNamespace

from mlops_assets.monitoring.drift_metrics import describe_reference
from resources.registered_models import Champion

PLAN = SimpleNamespace(partition_start="2013-01-10", partition_end="2013-01-30", features_version=0)


def test_the_reference_is_named_as_it_is_read():
    """After an erasure tagged the champion, drift read its days as they are now, while the feature_drift metadata
    still named the recorded Delta version (`features v0`), which the erasure's vacuum may have removed."""
    assert describe_reference(Champion(1, PLAN)) == "2013-01-10 .. 2013-01-30 (features v0)"
    erased = describe_reference(Champion(1, PLAN, erased="3efe8c8dd02d"))
    assert erased.startswith("2013-01-10 .. 2013-01-30 (features as they are now, without the rows erasure 3efe8c8dd02d removed")
    assert "(features v0)" not in erased
