"""A Serve application whose builder notes each run of it: tests of when Serve (re)builds an application."""

from __future__ import annotations

import time

from ray import serve


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class Constant:
    def __call__(self, request) -> str:
        return "ok"


def build(args: dict):
    """Notes the build in `args["builds"]` first, then takes `args["seconds"]`, so a test can act mid-build."""
    with open(args["builds"], "a") as notes:
        notes.write("built\n")
    time.sleep(float(args.get("seconds", 0)))
    return Constant.bind()
