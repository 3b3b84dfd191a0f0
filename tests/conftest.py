"""Shared pytest fixtures.

Hub fixtures: loopback stand-ins for the Hugging Face Hub (see tests/hub_servers.py), started by
the fixtures and torn down after. The suite runs with HF_HUB_OFFLINE=1 (tests/run.sh); a test
that talks to one of these local servers asks for `hub_online`, which lifts offline mode for
that test only.
"""

from __future__ import annotations

import importlib.util

import pytest

from hub_servers import MiniHub, OlahServer


@pytest.fixture
def hub_online(monkeypatch):
    """Let huggingface_hub make HTTP requests (to loopback servers) in this test, no telemetry."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture
def minihub(hub_online):
    """A fresh in-memory Hub (write + read endpoints) on 127.0.0.1; `.endpoint` is its URL."""
    with MiniHub() as hub:
        yield hub


@pytest.fixture(scope="session")
def olah_server(tmp_path_factory):
    """One olah mirror (offline, serving local git repos) for the session: startup takes seconds."""
    if importlib.util.find_spec("olah") is None:
        pytest.skip("olah is not installed (pip install -e '.[test]')")
    with OlahServer(tmp_path_factory.mktemp("olah")) as server:
        yield server


@pytest.fixture
def olah(olah_server, hub_online):
    """The session's olah mirror, with huggingface_hub allowed to reach it in this test."""
    return olah_server
