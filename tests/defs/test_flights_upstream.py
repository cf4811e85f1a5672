"""The demo's data loads where pkg_resources does not exist (setuptools 81+, uv environments)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
sys.modules["pkg_resources"] = None  # as in an environment without setuptools: importing it fails
from mlops_assets.defs.flights.upstream import flights_table, reference_frames
flights, ref = flights_table(), reference_frames()
print(flights.height, flights.schema["time_hour"], ref["weather"].height, ref["planes"].height)
"""


def test_demo_data_loads_without_pkg_resources():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    words = out.stdout.split()
    flights, weather, planes = int(words[0]), int(words[-2]), int(words[-1])
    assert flights == 336_776 and "UTC" in out.stdout
    assert weather > 26_000 and planes == 3_322
