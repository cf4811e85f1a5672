"""`mlops bench drift`: the platform's drift decision against Evidently's DataDriftPreset.

Both sides run in their own subprocess on the same Parquet files, so each peak
memory (VmHWM) is its own. Drift is injected in known columns; the report gives
time, peak memory and agreement of the per-column decisions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

DRIFTED = ["n00", "n03", "n07", "n11", "c0", "c3"]


def make_data(rows: int, numerical: int, categorical: int, folder: Path) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(7)
    num = [f"n{i:02d}" for i in range(numerical)]
    cat = [f"c{i}" for i in range(categorical)]
    levels = np.array(["a", "b", "c", "d", "e", "f"])
    base_p = np.array([0.3, 0.25, 0.2, 0.1, 0.1, 0.05])
    for name, drift in (("reference", False), ("current", True)):
        cols = {}
        for i, c in enumerate(num):
            shift = 0.35 if drift and c in DRIFTED else 0.0
            scale = 1.0 + (0.1 * i)
            cols[c] = rng.normal(shift * scale, scale, rows) if i % 2 == 0 else rng.gamma(2.0 + shift * 4, scale, rows)
        for c in cat:
            p = base_p[::-1] if drift and c in DRIFTED else base_p
            cols[c] = levels[rng.choice(6, rows, p=p)]
        pl.DataFrame(cols).write_parquet(folder / f"{name}.parquet")
    return num, cat


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_side(side: str, folder: Path, num: list[str], cat: list[str]) -> dict:
    if side == "platform-profile":
        from mlops_assets.monitoring.drift import profile

        reference = pl.read_parquet(folder / "reference.parquet")
        start = time.perf_counter()
        text = profile(reference, num, cat).to_json()
        elapsed = time.perf_counter() - start
        (folder / "profile.json").write_text(text)
        return {"seconds": elapsed, "peak_mb": _peak_mb()}
    if side == "platform":
        from mlops_assets.monitoring.drift import ReferenceProfile, detect

        current = pl.read_parquet(folder / "current.parquet")
        start = time.perf_counter()
        result = detect(ReferenceProfile.from_json((folder / "profile.json").read_text()), current)
        elapsed = time.perf_counter() - start
        return {"seconds": elapsed, "peak_mb": _peak_mb(), "drifted": sorted(result.drifted()), "columns": result.columns.height}
    import evidently  # noqa: F401  (import time is not counted)

    from mlops_assets.monitoring.drift_report import evidently_drift

    reference = pl.read_parquet(folder / "reference.parquet")
    current = pl.read_parquet(folder / "current.parquet")
    start = time.perf_counter()
    table = evidently_drift(reference, current, num, cat, sample_rows=None)
    elapsed = time.perf_counter() - start
    return {
        "seconds": elapsed,
        "peak_mb": _peak_mb(),
        "drifted": sorted(table.filter(pl.col("drifted")).get_column("column").to_list()),
        "columns": table.height,
    }


def bench(rows: int, numerical: int, categorical: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        num, cat = make_data(rows, numerical, categorical, folder)
        results = {}
        for side in ("platform-profile", "platform", "evidently"):
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mlops_assets.cli.bench.drift_bench",
                    "--side",
                    side,
                    "--folder",
                    tmp,
                    "--num",
                    ",".join(num),
                    "--cat",
                    ",".join(cat),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            results[side] = json.loads(out.stdout.strip().splitlines()[-1])
    columns = num + cat
    ours, theirs = set(results["platform"]["drifted"]), set(results["evidently"]["drifted"])
    agreement = sum((c in ours) == (c in theirs) for c in columns) / len(columns)
    return {
        "rows": rows,
        "columns": len(columns),
        "injected": DRIFTED,
        "platform_decision_s": results["platform"]["seconds"],
        "platform_decision_peak_mb": results["platform"]["peak_mb"],
        "platform_profile_s": results["platform-profile"]["seconds"],
        "platform_profile_peak_mb": results["platform-profile"]["peak_mb"],
        "evidently_s": results["evidently"]["seconds"],
        "evidently_peak_mb": results["evidently"]["peak_mb"],
        "speedup": results["evidently"]["seconds"] / results["platform"]["seconds"],
        "speedup_including_profile": results["evidently"]["seconds"]
        / (results["platform"]["seconds"] + results["platform-profile"]["seconds"]),
        "agreement": agreement,
        "platform_drifted": sorted(ours),
        "evidently_drifted": sorted(theirs),
    }


def print_report(r: dict) -> None:
    print(f"drift decision, {r['rows']:,} rows x {r['columns']} columns, drift injected in {', '.join(r['injected'])}")
    print(f"{'':28}{'seconds':>10}{'peak MB':>10}")
    print(f"{'platform (stored profile)':28}{r['platform_decision_s']:>10.2f}{r['platform_decision_peak_mb']:>10.0f}")
    print(f"{'platform profile (once)':28}{r['platform_profile_s']:>10.2f}{r['platform_profile_peak_mb']:>10.0f}")
    print(f"{'Evidently DataDriftPreset':28}{r['evidently_s']:>10.2f}{r['evidently_peak_mb']:>10.0f}")
    print(f"speedup {r['speedup']:.1f}x (with profiling {r['speedup_including_profile']:.1f}x); agreement {r['agreement']:.0%}")
    print(f"platform drifted: {r['platform_drifted']}\nevidently drifted: {r['evidently_drifted']}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--side")
    p.add_argument("--folder")
    p.add_argument("--num")
    p.add_argument("--cat")
    args = p.parse_args(argv)
    print(json.dumps(run_side(args.side, Path(args.folder), args.num.split(","), args.cat.split(","))))


if __name__ == "__main__":
    main()
