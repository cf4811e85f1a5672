"""The platform's Dagster Components: a declared model pipeline is an instance of `MlPipeline`.

A `defs.yaml` with `type: mlops_assets.components.MlPipeline` and the declaration as its
`attributes` is all a pipeline needs: Dagster's `dg` tools list, check and scaffold it
(the attribute schema is `PipelineDeclaration`), and any Dagster project that depends on
this package can declare pipelines in its own defs folder.
"""

from __future__ import annotations

import re
from datetime import date
from functools import cache

import dagster as dg
import yaml
from pydantic import BaseModel

from mlops_assets.core.declaration import DeclarationError, PipelineDeclaration, parse_declaration
from mlops_assets.pipeline import build_pipeline
from resources.defaults import default_resources


@cache
def platform_resources() -> dg.Definitions:
    """The default resources, built once per process: every pipeline's definitions carry the same
    objects, so any number of pipelines merge into one code location."""
    return dg.Definitions(resources=default_resources())


FEATURES_TEMPLATE = '''"""Feature code of the {name} pipeline: row-wise transformations of raw records into model inputs.
The platform evaluates feature_expressions on each day's clean rows in training and on request records in
serving; see mlops_assets/core/feature_contract.py for the contract (build_features for code that needs the
whole frame, history_stats, CATEGORICAL_FEATURES, INPUT_COLUMNS)."""

import polars as pl

from mlops_assets.core.feature_contract import FeatureReference


def feature_expressions(reference: FeatureReference) -> list[pl.Expr]:
    return [pl.col("value"), pl.col("value").is_null().cast(pl.Int8).alias("value_missing")]
'''


def starter_declaration(name: str, features_module: str) -> dict:
    """A small valid declaration to edit: CSV files per day, one input column, a binary target."""
    return {
        "name": name,
        "description": f"TODO: what the {name} model predicts, for whom",
        "landing": {"format": "csv", "file_pattern": f"{name}_{{partition}}.csv"},
        "partitioning": {"kind": "daily", "start": date.today().replace(day=1).isoformat()},
        "schema": {
            "unique": ["id"],
            "columns": {
                "id": {"type": "str"},
                "value": {"type": "float64", "nullable": True},
                "label": {"type": "int8", "allowed": [0, 1]},
            },
        },
        "features": {"module": features_module, "history_days": 0},
        "target": {"column": "label", "task": "binary"},
    }


class MlPipelineScaffolder(dg.Scaffolder):
    """`dg scaffold defs mlops_assets.components.MlPipeline <name>`: a defs.yaml with a starter
    declaration that loads as it is, and the feature module it names."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        name = re.sub(r"[^a-z0-9_]", "_", request.target_path.name.lower()).strip("_") or "pipeline"
        if not name[0].isalpha():
            name = f"p_{name}"
        package = ".".join(request.target_path.resolve().relative_to(request.project_root.resolve()).parts)
        declaration = starter_declaration(name, f"{package}.features")
        parse_declaration(declaration, "the scaffolded declaration")  # what is written loads
        request.target_path.mkdir(parents=True, exist_ok=True)
        (request.target_path / "features.py").write_text(FEATURES_TEMPLATE.format(name=name))
        text = yaml.safe_dump({"type": request.type_name, "attributes": declaration}, sort_keys=False)
        (request.target_path / "defs.yaml").write_text(text)


@dg.scaffold_with(MlPipelineScaffolder)
class MlPipeline(dg.Component):
    """A model pipeline: landed files to validated Delta partitions, features, a LightGBM model
    tracked and gated in MLflow, Ray Serve, drift monitoring and retraining, built from its
    declaration (the component's attributes)."""

    def __init__(self, declaration: PipelineDeclaration, with_resources: bool = True):
        self.declaration = declaration
        self.with_resources = with_resources

    @classmethod
    def get_model_cls(cls) -> type[BaseModel]:
        return PipelineDeclaration

    @classmethod
    def load(cls, attributes: BaseModel | None, context: dg.ComponentLoadContext) -> MlPipeline:
        if not isinstance(attributes, PipelineDeclaration):
            raise DeclarationError(f"{context.path}: an {cls.__name__} component needs the pipeline declaration as its attributes")
        return cls(attributes)

    def build_defs(self, context: dg.ComponentLoadContext | None = None) -> dg.Definitions:
        defs = build_pipeline(self.declaration)
        return dg.Definitions.merge(defs, platform_resources()) if self.with_resources else defs
