"""The platform's Dagster Components: a declared model pipeline is an instance of `MlPipeline`.

A `defs.yaml` with `type: mlops_assets.components.MlPipeline` and the declaration as its
`attributes` is all a pipeline needs: Dagster's `dg` tools list, check and scaffold it
(the attribute schema is `PipelineDeclaration`), and any Dagster project that depends on
this package can declare pipelines in its own defs folder.
"""

from __future__ import annotations

from functools import cache

import dagster as dg
from pydantic import BaseModel

from mlops_assets.core.declaration import DeclarationError, PipelineDeclaration
from mlops_assets.pipeline import build_pipeline
from resources.defaults import default_resources


@cache
def platform_resources() -> dg.Definitions:
    """The default resources, built once per process: every pipeline's definitions carry the same
    objects, so any number of pipelines merge into one code location."""
    return dg.Definitions(resources=default_resources())


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
