"""Endpoints bind loopback by default; anything wider needs the prediction token or a logged opt-out."""

from __future__ import annotations

import logging

import pytest

from mlops_assets.cli.main import main
from serving.exposure import ExposureError, check_exposure, is_loopback
from tests.support.models import flights_variant


def test_loopback_needs_nothing_and_other_addresses_need_the_token(monkeypatch, caplog):
    decls = [flights_variant()]
    monkeypatch.delenv("MLOPS_SERVE_TOKEN", raising=False)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    assert check_exposure("127.0.0.1", decls) is None
    for host in ("0.0.0.0", "10.1.2.3", "serving.internal"):
        with pytest.raises(ExposureError, match="MLOPS_SERVE_TOKEN is not set"):
            check_exposure(host, decls)
    with caplog.at_level(logging.WARNING, logger="mlops.serving"):
        warning = check_exposure("0.0.0.0", decls, allow_unauthenticated=True)
    assert "anyone who reaches 0.0.0.0" in warning and warning in caplog.text
    monkeypatch.setenv("MLOPS_SERVE_TOKEN", "s3cret")
    assert check_exposure("0.0.0.0", decls) is None


def test_serve_start_refuses_an_unguarded_public_bind_before_starting_anything(monkeypatch, capsys):
    monkeypatch.delenv("MLOPS_SERVE_TOKEN", raising=False)
    assert main(["serve", "start", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlops serve: error: serving on 0.0.0.0") and "--allow-unauthenticated" in err and err.count("\n") == 1
