"""Preflight: before a minute is spent building, the daemon answers and every registry
answers `/v2/` and accepts our credentials for a push to the image's repository.

Credentials, in order: the spec's `username` + `password_env`, else the first file of the
containers tools' lookup order with an entry for the registry (containers_config: their
auth.json files, then the docker config with its `credsStore` and `credHelpers`), else
anonymous; with -v the file is named. Every password found is registered with the console's
masking filter at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from shipit import containers_config, docker_api, log, spec
from shipit.errors import StageError
from shipit.log import Console
from shipit.plan import ImagePlan
from shipit.registry import Credentials, Endpoint, Registry, RegistryError

_log = log.get(__name__)


@dataclass(frozen=True, kw_only=True)
class Access:
    """A registry that answered, with the client and credentials to use for it."""

    registry: spec.Registry
    client: Registry
    credentials: Credentials | None


def credentials_for(registry: spec.Registry, env: Mapping[str, str]) -> Credentials | None:
    if registry.password_env:
        password = env.get(registry.password_env)
        if not password:
            raise StageError(
                "preflight",
                f"registry {registry.url}: {registry.password_env} is not set"
                f" (the spec takes the password for {registry.username} from it)",
            )
        return Credentials(username=registry.username or "", password=password)
    found = containers_config.find_auth(registry.url, env)
    if found is None:
        _log.debug("registry %s: no credentials found, anonymous", registry.url)
        return None
    _log.debug("registry %s: credentials of %s from %s", registry.url, found.username, found.source)
    return Credentials(username=found.username, password=found.password)


def open_registries(
    images: Iterable[ImagePlan], env: Mapping[str, str], console: Console
) -> dict[str, Access]:
    """A client per registry the images push to (by url), credentials resolved."""
    access: dict[str, Access] = {}
    for image in images:
        if "push" not in image.stages:
            continue  # a build-only run (a fork's pull request) needs no registry secret
        for registry in image.image.registries:
            if registry.url in access:
                continue
            credentials = credentials_for(registry, env)
            if credentials is not None:
                console.secret(credentials.password)
            endpoint = Endpoint(
                host=registry.host,
                insecure=registry.insecure,
                ca_file=registry.ca_file,
                credentials=credentials,
            )
            client = Registry(
                endpoint,
                retries=image.image.push.retries,
                on_retry=_retry_logger(console, registry.url),
            )
            access[registry.url] = Access(registry=registry, client=client, credentials=credentials)
    return access


def _retry_logger(console: Console, url: str) -> Callable[[str], None]:
    def log_retry(line: str) -> None:
        console.write(f"retry {url}: {line}")

    return log_retry


def check_daemon(daemon: docker_api.Daemon, console: Console) -> None:
    try:
        version = daemon.ping()
    except docker_api.DaemonError as exc:
        raise StageError("preflight", str(exc)) from None
    console.write(f"docker daemon {version} at {daemon.host}")


def check_registries(
    images: Iterable[ImagePlan], access: Mapping[str, Access], console: Console
) -> None:
    """Every (registry, repository) accepts a push; all checked at once, all failures named."""
    checks = sorted(
        {
            (t.registry, t.repository)
            for image in images
            for t in image.targets
            if "push" in image.stages
        }
    )
    if not checks:
        return

    def check(item: tuple[str, str]) -> str | None:
        url, repository = item
        try:
            access[url].client.check_push_access(repository)
        except RegistryError as exc:
            return f"{url}: {exc}"
        console.write(f"registry {url}: push to {repository} allowed")
        return None

    with ThreadPoolExecutor(max_workers=min(8, len(checks))) as pool:
        problems = [p for p in pool.map(check, checks) if p]
    if problems:
        raise StageError(
            "preflight",
            "a registry cannot take the push, nothing was built:\n  " + "\n  ".join(problems),
        )
