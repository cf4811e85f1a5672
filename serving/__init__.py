"""Ray Serve applications for declared pipelines (lifecycle step 6).

- `app`: builders named in the Serve config (`serving.app:build_app`, `serving.app:build_gateway`).
- `gateway`: the HTTP ingress (KServe V2 + TF-Serving V1 REST, admin endpoints, OpenAPI).
- `deployments`: per-pipeline model servers (champion CPU/GPU, challenger); the champion's CPU group routes.
- `requests`: request bodies -> validated typed records (reusing ingestion's conform/validate).
- `registry`, `gpu`, `reference`: loading a model version, nvforest on GPU, the feature reference.
- `prediction_log`: batched, non-blocking Delta log of every prediction.
- `config`, `control`: the declarative Serve config and the operations that change it.
- `deployment_definitions`, `commands`: the Dagster asset/sensor/resource and `mlops serve`.
"""
