"""Dagster runs join the Ray cluster that serves this platform home, not the newest one on the host."""

import json
import socket

import pytest

from serving.control import published_address_file, resolve_address


def test_auto_resolves_to_the_published_cluster_while_it_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    assert resolve_address("auto") == "auto", "nothing published: Ray's own auto"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    published_address_file().parent.mkdir(parents=True)
    published_address_file().write_text(json.dumps({"address": address, "auth_mode": "token"}))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with pytest.raises(LookupError, match="uses token auth: start this process with RAY_AUTH_MODE=token"):
        resolve_address("auto")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert resolve_address("auto") == address
    assert resolve_address("10.0.0.5:6379") == "10.0.0.5:6379", "an explicit address is never replaced"
    listener.close()
    assert resolve_address("auto") == "auto", "a stale address (cluster gone) is ignored"
    published_address_file().write_text("not json")
    assert resolve_address("auto") == "auto"
