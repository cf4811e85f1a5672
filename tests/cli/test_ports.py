"""Ports claimed for local servers: never handed out twice, never where other processes take ports at random."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from mlops_assets.cli import ports
from mlops_assets.cli.main import main
from mlops_assets.cli.ports import SINGLE, bind_error, claim_block, claim_port


@pytest.fixture
def own_claims(tmp_path, monkeypatch):
    """A claims folder of the test's own: blocks this session's other tests (or another session) hold stay out."""
    folder = tmp_path / "claims"
    monkeypatch.setattr(ports, "CLAIMS", folder)
    return folder


def test_port_blocks_are_claimed_once_per_host(own_claims):
    """Aligned blocks, each claimed by a file lock held for the process's life: never handed out twice."""
    bases = {claim_block(10, 31_000, 31_040) for _ in range(4)}
    assert bases == {31_000, 31_010, 31_020, 31_030}
    with pytest.raises(RuntimeError, match="no free block of 10 ports"):
        claim_block(10, 31_000, 31_040)


def test_a_claim_holds_across_processes(own_claims):
    """Another process (another instance, or a test's server) cannot claim a block this one holds."""
    base = claim_block(5, 31_100, 31_110)
    code = f"from pathlib import Path; from mlops_assets.cli import ports; ports.CLAIMS = Path({str(own_claims)!r}); print(ports.claim_block(5, 31_100, 31_110))"
    child = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(child.stdout) == ({31_100, 31_105} - {base}).pop()


def test_single_ports_are_below_the_ranges_taken_at_random():
    """Below Ray's worker ports (10002 up) and Linux's ephemeral range (32768 up), and free to listen on."""
    claimed = {claim_port() for _ in range(5)}
    assert len(claimed) == 5 and all(SINGLE[0] <= p < SINGLE[1] < 10_002 for p in claimed)
    assert all(bind_error("127.0.0.1", p) is None for p in claimed)


def test_a_port_in_use_is_named_and_skipped(own_claims):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert bind_error("127.0.0.1", port).strerror == "Address already in use"  # type: ignore[union-attr]
        with pytest.raises(RuntimeError, match="no free block"):
            claim_block(1, port, port + 1)


def test_serve_start_on_a_port_in_use_is_a_clean_error_before_ray_starts(tmp_path, monkeypatch, capsys):
    """Not a HAProxy actor's traceback after Ray and Serve started: the port and what to do, exit 2."""
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "start", "flights", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use)" in err and "--port" in err
    assert "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing started, nothing written


def test_leadtime_bench_names_the_flag_of_a_port_in_use_before_it_builds_a_platform(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["bench", "leadtime", "--port", str(port), "--serve-port", str(claim_port())]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "pick another --port" in err and "Traceback" not in err


def test_demo_names_the_flag_of_a_port_in_use_before_it_lands_or_resets_anything(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    (tmp_path / "kept").write_text("a user's file")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["demo", "--reset", "--serve-port", str(port), "--port", str(claim_port()), "--mlflow-port", str(claim_port())]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "pick another --serve-port" in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]  # --reset wiped nothing, nothing landed


def test_a_host_this_machine_cannot_listen_on_is_named_with_what_to_do(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    monkeypatch.setenv("MLOPS_SERVE_TOKEN", "t")  # beyond loopback needs a token: the host is what is wrong here
    assert main(["demo", "--host", "999.1.1.1", "--port", str(claim_port())]) == 2
    err = capsys.readouterr().err
    assert "cannot listen on 999.1.1.1:" in err and "pick a --host this machine has" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_serve_start_refuses_an_unknown_pipeline_before_ray_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    monkeypatch.setattr("ray.init", lambda *a, **k: pytest.fail("Ray started for a pipeline that is not declared"))
    assert main(["serve", "start", "boats", "--port", str(claim_port())]) == 2
    err = capsys.readouterr().err
    assert "no pipeline named boats; declared: flights" in err and "Traceback" not in err
