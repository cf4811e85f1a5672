"""The training run's dataset source pins the features table's version, the first one (0) included."""

from __future__ import annotations

import json

from mlflow.data.delta_dataset_source import DeltaDatasetSource

from mlops_assets.models.registration import delta_source


def test_a_features_table_at_version_0_stays_pinned_through_mlflows_json():
    """A year landed at once is one commit: the features table is at version 0 when the first model trains."""
    for version in (0, 7):
        logged = json.loads(delta_source("/home/delta/flights/features", version).to_json())
        assert logged == {"path": "/home/delta/flights/features", "delta_table_version": version}
        assert DeltaDatasetSource.from_dict(logged).delta_table_version == version


def test_the_commit_an_image_was_built_from_is_recorded_where_no_checkout_is(monkeypatch):
    """A cluster image holds the installed package, no git checkout: every model recorded mlops.git_commit unknown."""
    import subprocess

    from mlops_assets.models.registration import git_commit

    monkeypatch.setenv("MLOPS_GIT_COMMIT", "0123abc")
    assert git_commit() == ("0123abc", False)
    monkeypatch.delenv("MLOPS_GIT_COMMIT")
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert git_commit()[0] == head  # a checkout: its own commit
