"""Embed the Serve config generated from the pipeline declarations into rayservice.yaml.

The RayService must serve exactly what `serving.config.serve_config` builds for the
declared pipelines (the same config `serve run` uses on a laptop), so it is
generated, never hand-edited. tests/deploy/test_deploy.py fails when it is out of date.

    .venv/bin/python deploy/k8s/sync_rayservice.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

MANIFEST = Path(__file__).with_name("rayservice.yaml")
BLOCK = re.compile(r"(?ms)^(  serveConfigV2: \|\n)(.*?)(?=^  \S)")


def expected_serve_config() -> dict:
    from mlops_assets.core.declaration import load_declarations
    from serving.config import serve_config

    config = serve_config(load_declarations())
    # structured logs for the cluster's log collector
    config["logging_config"] = {"encoding": "JSON", "log_level": "INFO"}
    return config


def render(manifest_text: str, config: dict) -> str:
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    indented = "".join(f"    {line}\n" if line else "\n" for line in body.splitlines())
    if not BLOCK.search(manifest_text):
        raise ValueError(f"{MANIFEST} has no `serveConfigV2: |` block under spec")
    return BLOCK.sub(lambda m: m.group(1) + indented, manifest_text, count=1)


def main() -> int:
    text = MANIFEST.read_text()
    MANIFEST.write_text(render(text, expected_serve_config()))
    print(f"updated serveConfigV2 in {MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
