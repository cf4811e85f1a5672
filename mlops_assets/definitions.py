"""The code location: every declared pipeline with the platform's resources.

By default the pipelines are the `MlPipeline` components in the package's defs folder
(`mlops_assets/defs/*/defs.yaml`), loaded by Dagster's own defs loader. `MLOPS_PIPELINES`
(files or folders, os.pathsep separated) points the platform at declarations elsewhere
instead: plain declaration files or component files, built by the same component.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from mlops_assets import defs as defs_folder
from mlops_assets.components import MlPipeline, platform_resources
from mlops_assets.core.declaration import PipelineDeclaration, load_declarations
from resources.defaults import default_resources


def build_definitions(declarations: Sequence[PipelineDeclaration], resources: dict | None = None) -> dg.Definitions:
    """The pipelines' definitions with `resources` (default: the platform's)."""
    pipelines = [MlPipeline(d, with_resources=False).build_defs() for d in declarations]
    shared = dg.Definitions(resources=resources if resources is not None else default_resources())  # as the environment is now
    return dg.Definitions.merge(*pipelines, shared)


def location() -> dg.Definitions:
    with warnings.catch_warnings():
        # Dagster marks its code references and the assets' backfill_policy beta, several times per load in every code
        # server and run process: dozens of console lines at a demo's start that no user of the platform can act on
        # (declarations through MLOPS_PIPELINES printed three per load as well), and its defs loader preview
        warnings.simplefilter("ignore", dg.BetaWarning)
        warnings.simplefilter("ignore", dg.PreviewWarning)
        if os.environ.get("MLOPS_PIPELINES"):
            return build_definitions(load_declarations())
        load_declarations()  # the defs folder's pipelines checked together first: unique names, no derived name twice
        # the package's parent is the project root, installed editable or not
        tree = dg.ComponentTree.from_module(defs_module=defs_folder, project_root=Path(defs_folder.__file__).parents[2])
        built = tree.build_defs()
    return dg.Definitions.merge(built, platform_resources())


defs = location()
