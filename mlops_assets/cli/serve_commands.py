"""`mlops serve ...`: run the local serving stack and steer it (what is not a Dagster materialization).

- `mlops serve start`: start Ray + Serve on this machine, deploy every pipeline that has a
  champion, and keep running until Ctrl-C (the Dagster deployment asset joins this Ray).
- `mlops serve deploy PIPELINE`: roll the pipeline to what its aliases name now.
- `mlops serve traffic PIPELINE --canary 0.1 [--shadow|--no-shadow]`: change the challenger's share.
- `mlops serve status`: applications, versions, traffic, prediction-log counters.
- `mlops serve config [-o FILE]`: the Serve config for `serve run` / `serve deploy` / KubeRay.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from mlops_assets.cli import ports
from mlops_assets.cli.arg_types import port_number, positive_int, traffic_share
from mlops_assets.cli.errors import Terminated
from mlops_assets.cli.ingress_janitor import ingress_folder


def _connect(args: argparse.Namespace) -> None:
    from serving import control

    control.connect(args.address)


def _pipelines(names: list[str] | None, declared: list | None = None):
    """The named declarations (all when none are named), from `declared` if given, else read from the folder."""
    from mlops_assets.core.declaration import load_declarations

    decls = {d.name: d for d in (load_declarations() if declared is None else declared)}
    unknown = [n for n in names or [] if n not in decls]
    if unknown:
        raise LookupError(f"no pipeline named {', '.join(unknown)}; declared: {', '.join(sorted(decls))}")
    return [decls[n] for n in names] if names else list(decls.values())


# Serve's HAProxy ingress with direct ingress (the default, `--proxy haproxy`): HAProxy (C) forwards HTTP
# straight to the ingress replicas (the gateway, and each champion for its V2 infer route) instead of
# through the Python proxy actor: V2 single-row 131 -> 782 req/s at c=16 here (`mlops bench serving`). Each replica
# then listens on a port of its own, and two Serve instances on one host that draw from the same range
# answer each other's requests (seen on a shared host), so each instance claims a private block.
HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"}
PORT_BLOCK = 200


def ingress_env(proxy: str, folder: str) -> dict[str, str]:
    """Environment for Ray (set before it starts) selecting the ingress; nothing where the user already chose.

    With HAProxy, its files, its stats/metrics ports and the replicas' direct-ingress port ranges are
    this instance's own (`folder`, claimed blocks of free ports), so two instances on one host never share
    /tmp/haproxy-serve or a replica port.
    """
    if proxy != "haproxy" or "RAY_SERVE_ENABLE_HA_PROXY" in os.environ:
        return {}
    http, grpc = ports.claim_block(PORT_BLOCK, *ports.INGRESS_HTTP), ports.claim_block(PORT_BLOCK, *ports.INGRESS_GRPC)
    stats = ports.claim_block(2, *ports.HAPROXY_STATS)  # HAProxy's stats and metrics ports
    return {
        **HAPROXY_ENV,
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{folder}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{folder}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": folder,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{folder}/server-state",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{folder}/metrics.sock",
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(stats + 1),
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(http),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(http + PORT_BLOCK - 1),
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": str(grpc),
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": str(grpc + PORT_BLOCK - 1),
        # a stopping ingress replica stays open this long for an external load balancer to deregister it
        # (Ray's default 30 s made every stop of `mlops serve start` take over 30 s); here HAProxy is
        # Serve's own, reloaded as the replica goes, and it retries refused connections
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    }


def start(args: argparse.Namespace) -> int:
    from serving.exposure import check_exposure

    declared = _pipelines(None)  # read once
    chosen = _pipelines(args.pipelines, declared)  # an unknown name is refused before Ray starts
    warning = check_exposure(args.host, declared, args.allow_unauthenticated)  # the gateway serves every pipeline
    if warning:
        print(f"mlops serve start: warning: {warning}", file=sys.stderr, flush=True)

    ports.require_listenable(args.host, {"--port": args.port})
    with ingress_folder("mlops-haproxy-") as folder:
        os.environ.update(ingress_env(args.proxy, folder))  # before Ray and Serve import their constants
        return _start(args, chosen)


def _terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def own_ray(num_cpus: int | None, namespace: str) -> Iterator[None]:
    """Ray (and Serve on it) started by this process for as long as the block runs, shut down however the block
    ends: Ctrl-C, SIGTERM (to this process alone, as `mlops demo` stops it, or to its whole process group, as
    systemd does), or an error while starting. Ray's driver answers SIGTERM with a C++ handler that aborts the
    process (exit -6), which skipped every cleanup below; from `ray.init` on, SIGTERM unwinds like Ctrl-C
    instead (exit 143).

    Nothing in this process starts a Ray of its own once this one is shut down: Ray's auto-init is off.
    Without that, a Serve handle's long poll that polled again after `ray.shutdown` (its thread outlives
    it) started a fresh local Ray that nothing stopped: seen in one of five SIGTERMs to the whole process
    group."""
    no_ray_auto_init()
    import ray

    ray.init(num_cpus=num_cpus, include_dashboard=False, namespace=namespace)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the shutdown short
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _shut_down_serve()
        ray.shutdown()


def no_ray_auto_init() -> None:
    """Ray's own switch, `RAY_ENABLE_AUTO_CONNECT=0`: a Ray API called before `ray.init` (or after
    `ray.shutdown`) raises instead of starting a local Ray. Ray reads it when it is imported; where it already
    was, the value it read is set the same way."""
    os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"
    hook = sys.modules.get("ray._private.auto_init_hook")
    if hook is not None:
        hook.enable_auto_connect = False


CONTROLLER_PROBE_S = 5.0  # a live controller answers in milliseconds


def _controller_answers(timeout_s: float) -> bool:
    """Whether Serve's controller answers within `timeout_s`. Asked on a thread of its own: after a SIGTERM to the
    whole process group, Ray's GCS still runs but no longer answers, and Ray's calls to it have no timeout."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    answered = threading.Event()

    def probe() -> None:
        try:
            controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
            ray.get(controller.check_alive.remote(), timeout=timeout_s)
        except (ValueError, ray.exceptions.RayError):  # no controller, or one that is dead or restarting
            return
        answered.set()

    threading.Thread(target=probe, name="serve-controller-probe", daemon=True).start()
    return answered.wait(timeout_s)


def _shut_down_serve() -> None:
    """Serve's own shutdown, where it can do its job: the controller drains the replicas (each writes its
    queued prediction-log rows) and stops HAProxy. A SIGTERM to the whole process group already stopped the
    controller and the replicas; Serve's shutdown then waited on Ray's GCS until Ray's driver gave up after 60 s
    (exit 1), while `ray.shutdown` stops what is left at once."""
    from ray import serve

    if _controller_answers(CONTROLLER_PROBE_S):
        serve.shutdown()


def _start(args: argparse.Namespace, chosen: list) -> int:
    with own_ray(args.num_cpus, "serve"):
        return _serve(args, chosen)


def _serve(args: argparse.Namespace, chosen: list) -> int:
    import ray

    from resources.serving import ServeSettings
    from serving import control

    control.start(args.host, args.port)
    control.ensure_gateway(ServeSettings())
    ingress = "HAProxy + direct ingress" if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "Serve's proxy"
    print(f"Ray Serve on http://{args.host}:{args.port} via {ingress} (Ray address {ray.get_runtime_context().gcs_address})", flush=True)
    for decl in chosen:
        try:
            versions = control.follow_aliases(decl, ServeSettings(pipeline=decl.name))
        except LookupError as err:
            print(f"  {decl.name}: not deployed yet ({err}); the {decl.name}/deployment asset deploys it once promoted", flush=True)
            continue
        control.wait_for_version(decl.name, versions["champion"])  # type: ignore[arg-type]
        print(
            f"  {decl.name}: champion v{versions['champion']}\n"
            f"    curl -s http://{args.host}:{args.port}/v2/models/{decl.name}\n"
            f"    curl -s -X POST http://{args.host}:{args.port}/v1/models/{decl.name}:predict "
            "-H 'Content-Type: application/json' -d '{\"instances\": [...]}'",
            flush=True,
        )
    print("Ctrl-C (or SIGTERM) stops serving.", flush=True)
    return serve_until_stopped()


def serve_until_stopped() -> int:
    """Block until SIGINT or SIGTERM (0: stopped as asked); `own_ray` then shuts down Serve and Ray."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    return 0


def deploy(args: argparse.Namespace) -> int:
    from resources.serving import ServeSettings
    from serving import control

    _connect(args)
    for decl in _pipelines([args.pipeline]):
        versions = control.follow_aliases(decl, ServeSettings(pipeline=decl.name))
        control.wait_for_version(decl.name, versions["champion"])  # type: ignore[arg-type]
        print(f"{decl.name}: champion v{versions['champion']}, challenger {versions['challenger']}")
    return 0


def traffic(args: argparse.Namespace) -> int:
    from serving import control

    if args.canary is None and args.shadow is None:
        raise ValueError("nothing to change: give --canary SHARE and/or --shadow / --no-shadow")
    _connect(args)
    _pipelines([args.pipeline])
    from resources.serving import ServeSettings

    settings = ServeSettings(pipeline=args.pipeline)
    applied = control.set_traffic(args.pipeline, args.canary, args.shadow, settings=settings, actor=args.by, reason=args.reason)
    print(f"{args.pipeline}: {json.dumps(applied)}")
    return 0


def status(args: argparse.Namespace) -> int:
    from ray import serve

    from serving import control
    from serving.config import v1_app_name

    _connect(args)
    for decl in _pipelines(args.pipelines):
        app = control.app_status(decl.name)
        line = {"pipeline": decl.name, **app, "traffic": control.traffic_of(decl.name)}
        if decl.serving.v1_route is not None:
            line["v1_route"] = control.app_status(v1_app_name(decl.name))
        if app["status"] == "RUNNING":
            line["models"] = serve.get_app_handle(decl.name).pipeline_status.remote().result(timeout_s=30)
        print(json.dumps(line, indent=2, default=str))
    return 0


def config(args: argparse.Namespace) -> int:
    from mlops_assets.core.declaration import load_declarations
    from serving.config import check, serve_config, to_yaml

    cfg = serve_config(load_declarations(), host=args.host, port=args.port)
    check(cfg)
    text = to_yaml(cfg)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def serve_process(env: dict[str, str], host: str = "127.0.0.1", port: int = 8000):
    """`mlops serve start` as a child process, for `mlops demo` to run beside Dagster (stop it with SIGTERM)."""
    import subprocess

    exe = Path(sys.executable).with_name("mlops")
    # its own process group, so whatever its Ray leaves behind can be stopped with it (`stop_local_platform`)
    return subprocess.Popen([str(exe), "serve", "start", "--host", host, "--port", str(port)], env=env, start_new_session=True)


def register(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run and steer model serving (Ray Serve)")
    sub = serve.add_subparsers(dest="serve_command", required=True, metavar="SUBCOMMAND")
    address = os.environ.get("RAY_ADDRESS", "auto")

    p = sub.add_parser("start", help="start Ray + Serve here and serve every champion (foreground)")
    p.add_argument("pipelines", nargs="*", help="pipelines to deploy (default: all declared)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; any other needs the prediction token)")
    p.add_argument("--port", type=port_number, default=8000)
    p.add_argument(
        "--allow-unauthenticated", action="store_true", help="serve beyond loopback without a prediction token (logged as a warning)"
    )
    p.add_argument("--num-cpus", type=positive_int, default=None, help="CPUs the Ray instance declares (default: the machine's)")
    p.add_argument(
        "--proxy",
        choices=("haproxy", "serve"),
        default="haproxy",
        help="HTTP ingress: HAProxy + direct ingress with private ports (default; about 6x the V2 single-row throughput, "
        "see `mlops bench serving`) or Serve's Python proxy",
    )
    p.set_defaults(handler=start)

    p = sub.add_parser("deploy", help="roll a pipeline to the versions its aliases name now")
    p.add_argument("pipeline")
    p.add_argument("--address", default=address)
    p.set_defaults(handler=deploy)

    p = sub.add_parser("traffic", help="set the challenger's canary share and/or shadow mirroring")
    p.add_argument("pipeline")
    p.add_argument("--canary", type=traffic_share, default=None, help="share of requests the challenger answers (0..1)")
    p.add_argument("--shadow", action=argparse.BooleanOptionalAction, default=None, help="mirror requests to the challenger")
    p.add_argument("--by", default=os.environ.get("USER", "unknown"), help="who changes the traffic (audited; default: the current user)")
    p.add_argument("--reason", default="traffic change from the command line", help="why (audited)")
    p.add_argument("--address", default=address)
    p.set_defaults(handler=traffic)

    p = sub.add_parser("status", help="applications, versions, traffic and prediction-log counters")
    p.add_argument("pipelines", nargs="*")
    p.add_argument("--address", default=address)
    p.set_defaults(handler=status)

    p = sub.add_parser("config", help="print (or write) the Serve config for serve run / serve deploy / KubeRay")
    p.add_argument("-o", "--output")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=port_number, default=8000)
    p.set_defaults(handler=config)
