"""Session fixtures for the integration tests: a Docker daemon and loopback registries, and
for BuildKit tests a second daemon (dockerd 28 on the containerd image store) and arm64
emulation.

Every test under tests/integration is marked ``integration`` automatically.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.buildkit import Emulation, arm64_emulation
from tests.support.dockerd28 import Dockerd28, start_dockerd28, stop_dockerd28
from tests.support.services import (
    Dockerd,
    Registry,
    RegistryFactory,
    ToolMissingError,
    ensure_dockerd,
    start_registry,
    stop_dockerd,
    stop_registry,
)
from tests.support.tokenauth import Account, TokenServer, accounts, token_auth_config

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # this hook sees every item of the session: mark only the ones in this folder
    for item in items:
        if item.path.resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def dockerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd]:
    """A Docker daemon that answers; DOCKER_HOST points at it for the whole session."""
    d = ensure_dockerd(tmp_path_factory.mktemp("dockerd"))
    before = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = d.host
    try:
        yield d
    finally:
        if before is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = before
        stop_dockerd(d)


@pytest.fixture(scope="session")
def dockerd_containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dockerd28]:
    """Debian sid's dockerd 28 on the containerd image store, with a containerd of its own,
    on sockets, folders and a bridge of its own (tests/support/dockerd28.py).

    The session's DOCKER_HOST stays the ``dockerd`` fixture's: reach this daemon with
    ``.host`` (``docker --host``, ``buildkit.docker_at``) or ``.env()``.
    """
    try:
        d = start_dockerd28(tmp_path_factory.mktemp("dockerd28"))
    except ToolMissingError as e:
        pytest.fail(str(e))
    try:
        yield d
    finally:
        stop_dockerd28(d)


@pytest.fixture(scope="session")
def qemu_arm64() -> Emulation:
    """arm64 emulation (qemu-aarch64 in binfmt_misc) that works, or a failure that says how
    to install it; never a skip."""
    try:
        return arm64_emulation()
    except ToolMissingError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="session")
def registry_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryFactory]:
    """start_registry(workdir, tls=..., auth=..., port=..., delete=...) with a fresh workdir each time;
    every registry it started is stopped at the end of the session."""
    started: list[Registry] = []

    def factory(
        *,
        tls: bool = False,
        auth: tuple[str, str] | None = None,
        port: int | None = None,
        delete: bool = True,
        auth_config: Mapping[str, object] | None = None,
    ) -> Registry:
        reg = start_registry(
            tmp_path_factory.mktemp("registry"), tls=tls, auth=auth, port=port, delete=delete,
            auth_config=auth_config,
        )  # fmt: skip
        started.append(reg)
        return reg

    try:
        yield factory
    finally:
        errors = []
        for reg in reversed(started):
            try:
                stop_registry(reg)
            except Exception as e:  # stop the others all the same
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture(scope="session")
def plain_registry(registry_factory: RegistryFactory) -> Registry:
    """A plain-HTTP registry without auth."""
    return registry_factory()


@pytest.fixture(scope="session")
def tls_registry(registry_factory: RegistryFactory) -> Registry:
    """An HTTPS registry; its certificate is signed by ``ca_file``."""
    return registry_factory(tls=True)


@dataclass(frozen=True)
class TokenRegistry:
    """A registry with token auth and its token server (tests/support/tokenauth.py)."""

    registry: Registry
    tokens: TokenServer

    def account(self, name: str) -> Account:
        return self.tokens.accounts[name]


@pytest.fixture(scope="session")
def token_registry(
    registry_factory: RegistryFactory, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TokenRegistry]:
    """distribution 2.8 with `auth: token` and a token server of the tests' own, with three
    accounts: ``pusher`` (pull, push), ``reader`` (pull) and ``admin`` (pull, push, delete)."""
    tokens = TokenServer(
        accounts=accounts(
            ("pusher", "pull,push"), ("reader", "pull"), ("admin", "pull,push,delete")
        )
    ).start()
    bundle = tokens.write_bundle(tmp_path_factory.mktemp("token-auth") / "bundle.pem")
    try:
        yield TokenRegistry(
            registry=registry_factory(auth_config=token_auth_config(tokens, bundle)),
            tokens=tokens,
        )
    finally:
        tokens.stop()


@pytest.fixture(scope="session")
def auth_registry(registry_factory: RegistryFactory) -> Registry:
    """A plain-HTTP registry with htpasswd basic auth: user ``shipit``, a random password."""
    return registry_factory(auth=("shipit", secrets.token_urlsafe(16)))
