"""Who can reach the endpoints: loopback by default; any other address only with a prediction token,
or with an explicit opt-out that is logged."""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Iterable

from mlops_assets.core.declaration import PipelineDeclaration

log = logging.getLogger("mlops.serving")


class ExposureError(ValueError):
    """Binding beyond loopback without the tokens that guard it."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve anywhere


def check_exposure(host: str, decls: Iterable[PipelineDeclaration], allow_unauthenticated: bool = False) -> str | None:
    """Raises ExposureError when `host` is not loopback and a pipeline's prediction token is unset; with the
    opt-out, returns (and logs) the warning instead. None when nothing is exposed unguarded."""
    if is_loopback(host):
        return None
    unguarded = sorted({d.serving.token_env for d in decls if not os.environ.get(d.serving.token_env)})
    if not unguarded:
        return None
    what = f"serving on {host} exposes predictions beyond this machine, and {', '.join(unguarded)} is not set"
    if not allow_unauthenticated:
        raise ExposureError(f"{what}: set it (clients send Authorization: Bearer <token>), bind 127.0.0.1, or pass --allow-unauthenticated")
    warning = f"{what}: anyone who reaches {host} can ask for predictions (--allow-unauthenticated)"
    log.warning(warning)
    return warning
