"""Shared fixtures: every test runs with HOME in a temporary folder, never the real one, and
without the settings of the shell or CI job the session started in."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# What steers shipit or the tools the tests run, when the shell or CI job the session starts
# in sets it: a CI's own variables (a GitHub runner's GITHUB_OUTPUT, a GitLab job's CI_*),
# the tools' settings (TRIVY_SEVERITY, COSIGN_REPOSITORY, DOCKER_CONTEXT, BUILDX_BUILDER...),
# shipit's own and colour. No test, session fixture or tool a test starts sees them; a test
# sets what it needs. DOCKER_HOST stays (it names the daemon the tests use), and so do the
# package index and proxy settings (PIP_*, http_proxy...), which reach only the machine's
# registries (and never the tests' own addresses: see _own_addresses_not_proxied).
_STEERING_PREFIXES = (
    "GITHUB_",
    "GITLAB_",
    "CI_",
    "RUNNER_",
    "ACTIONS_",
    "SHIPIT_",
    "DOCKER_",
    "BUILDX_",
    "BUILDKIT_",
    "COSIGN_",
    "SIGSTORE_",
    "TUF_",
    "TRIVY_",
    "REGISTRY_",
)
_STEERING = frozenset({"CI", "XDG_CACHE_HOME", "NO_COLOR", "FORCE_COLOR"})
_KEPT = frozenset({"DOCKER_HOST", "SHIPIT_TEST_STATE", "SHIPIT_UPDATE_GOLDEN"})
_PROXIES = ("http_proxy", "https_proxy", "all_proxy")
# loopback, and the reserved .invalid names (RFC 6761) tests use for a host that does not exist
_OWN_ADDRESSES = ("127.0.0.1", "localhost", "::1", ".invalid")


def _steers(name: str) -> bool:
    return name not in _KEPT and (name in _STEERING or name.startswith(_STEERING_PREFIXES))


def _own_addresses_not_proxied(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a proxy set, the tests' own addresses bypass it: Python's requests (unlike Go's
    HTTP client) would send a test's requests to 127.0.0.1 through the proxy, and a name that
    does not exist would be the proxy's error instead of a DNS one."""
    if not any(os.environ.get(p) or os.environ.get(p.upper()) for p in _PROXIES):
        return
    for name in ("no_proxy", "NO_PROXY"):
        have = [h.strip() for h in os.environ.get(name, "").split(",") if h.strip()]
        monkeypatch.setenv(name, ",".join([*have, *(h for h in _OWN_ADDRESSES if h not in have)]))


def _leave_out_machine_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if _steers(n)]:
        monkeypatch.delenv(name)
    _own_addresses_not_proxied(monkeypatch)


@pytest.fixture(scope="session", autouse=True)
def _no_machine_settings() -> Iterator[None]:
    """For the session's fixtures too (daemons, registries, images built once per module)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _leave_out_machine_settings(monkeypatch)
        yield


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    _leave_out_machine_settings(monkeypatch)  # again: whatever an earlier test left behind


@pytest.fixture(autouse=True)
def _shipit_logging_restored() -> Iterator[None]:
    """shipit's command run in-process sets up its logger (a console handler on the test's
    captured stderr, the level -v asks for, no propagation); the next test gets it back as it
    was. Left behind, a later test's caplog caught an earlier step's DEBUG records, and the
    handler wrote to a stream pytest had closed."""
    logger = logging.getLogger("shipit")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path
