"""Fixtures for the end-to-end tests: the integration tests' Docker daemon and registries.

The fixture functions are the integration tests' own, imported here, so a run of
tests/e2e alone starts (and stops, by PID) what it needs. Every test under tests/e2e is
marked ``integration`` automatically; the long ones mark themselves ``slow``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import (  # noqa: F401 (fixtures, used by name)
    auth_registry,
    dockerd,
    dockerd_containerd,
    plain_registry,
    qemu_arm64,
    registry_factory,
    tls_registry,
)

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # this hook sees every item of the session: mark only the ones in this folder
    for item in items:
        if item.path.resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)
