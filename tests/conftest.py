"""Shared pytest fixtures.

Threads: the mechanics tests use tiny models, for which two OpenMP threads on two shared cores
cost more than they give; the suite runs on one thread, and the slow tests that train the real
default model ask for every core with the `all_cores` fixture.

Hub fixtures: loopback stand-ins for the Hugging Face Hub (see tests/hub_servers.py), started by
the fixtures and torn down after. The suite runs with HF_HUB_OFFLINE=1 (tests/run.sh); a test
that talks to one of these local servers asks for `hub_online`, which lifts offline mode for
that test only.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

import torch

from hub_servers import MiniHub, OlahServer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def all_cores():
    """Every core for this module (real-model training), one thread again afterwards."""
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(1)


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
