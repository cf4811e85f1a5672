"""Typed Dagster resources: where data and models live, configured not coded."""

from resources.delta_lake import DeltaLakeResource
from resources.landing_zone import LandedFile, LandingZoneResource
from resources.mlflow_registry import MlflowRegistryResource

__all__ = ["DeltaLakeResource", "LandedFile", "LandingZoneResource", "MlflowRegistryResource"]
