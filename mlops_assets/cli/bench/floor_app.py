"""The floor side of `mlops bench serving`: what Ray Serve itself costs a request, with none of our work in it.

The same ingress as `mlops serve start` (HAProxy + direct ingress, a Ray of the same CPUs), the
champion's replica groups as the pipeline declares them (replicas, CPUs, max ongoing requests), the
same request body read in full, and a constant answer: one application at the V2 infer route, one
at the V1 predict route. Ours/floor is then the cost of the platform's own work around the model.

Run as `python -m mlops_assets.cli.bench.floor_app --port P --num-cpus N`; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import os

V2_ANSWER = b'{"model_name":"flights","model_version":"0","id":"floor","outputs":[{"name":"predictions","shape":[1],"datatype":"FP64","data":[0.0]}]}'
V1_ANSWER = b'{"predictions":[0.0],"model_name":"flights","model_version":"0","request_id":"floor","role":"champion"}'


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--pipeline", default="flights")
    p.add_argument("--proxy", choices=["haproxy", "serve"], default="haproxy", help="the ingress ours runs behind")
    args = p.parse_args(argv)

    from mlops_assets.cli.ingress_janitor import ingress_folder
    from mlops_assets.cli.serve_commands import ingress_env

    with ingress_folder("mlops-fl-") as folder:  # short: HAProxy caps its socket paths at 97 characters
        os.environ.update(ingress_env(args.proxy, folder))  # before Ray and Serve read their settings
        return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    from mlops_assets.cli.serve_commands import own_ray, serve_until_stopped
    from mlops_assets.core.declaration import load_declarations
    from serving import control
    from serving.app import group_options

    decl = next(d for d in load_declarations() if d.name == args.pipeline)

    @serve.deployment
    class Constant:
        def __init__(self, answer: bytes):
            self.answer = answer

        async def __call__(self, request: Request) -> Response:
            await request.body()
            return Response(self.answer, media_type="application/json")

    with own_ray(args.num_cpus, "serve-floor"):
        control.start("127.0.0.1", args.port)
        options = group_options(decl.serving.cpu)
        serve.run(
            Constant.options(name="floor_v2", **options).bind(V2_ANSWER), name="floor-v2", route_prefix=f"/v2/models/{decl.name}/infer"
        )
        v1_options = group_options(decl.serving.v1_route or decl.serving.cpu)  # the replicas our V1 route has
        serve.run(
            Constant.options(name="floor_v1", **v1_options).bind(V1_ANSWER), name="floor-v1", route_prefix=f"/v1/models/{decl.name}:predict"
        )
        print("floor: serving", flush=True)
        return serve_until_stopped()


if __name__ == "__main__":
    raise SystemExit(main())
