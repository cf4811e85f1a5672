"""MLOps platform on Dagster assets: each step of a model's lifecycle is an asset."""
