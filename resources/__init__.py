"""Typed Dagster resources: where data lives, configured not coded."""

from resources.delta_lake import DeltaLakeResource
from resources.landing_zone import LandedFile, LandingZoneResource

__all__ = ["DeltaLakeResource", "LandedFile", "LandingZoneResource"]
