"""What the containers tools (podman, buildah, skopeo) set up that shipit honours as they do:
registry credentials in their auth files, and registries marked insecure in registries.conf.

Credentials, in containers-auth.json(5)'s order; the first file with an entry for the
registry wins:

1. `REGISTRY_AUTH_FILE`;
2. `${XDG_RUNTIME_DIR}/containers/auth.json`, or `/run/containers/<uid>/auth.json` when
   XDG_RUNTIME_DIR is unset (where `podman login` writes);
3. `${XDG_CONFIG_HOME:-~/.config}/containers/auth.json`;
4. Docker's config, `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, read as Docker
   reads it (`auths`, `credsStore`, `credHelpers`: docker_api.config_auth);
5. `~/.dockercfg` (Docker's old format: the `auths` mapping alone).

An auth file's key is a host, or a host and a namespace (`quay.io/team`); the most specific key
that the registry's url starts with wins within a file. `https://` and a `/v1/` path are
dropped from a key (the old Docker form), and Docker Hub's hosts are `docker.io`.

registries.conf: `$HOME/.config/containers/registries.conf` when it exists, else
`/etc/containers/registries.conf` (containers-registries.conf(5)); a registry is insecure in
the v2 form (`[[registry]]` with `location` and `insecure = true`) or the v1 form
(`[registries.insecure] registries = [...]`).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from shipit import log, spec

_log = log.get(__name__)
_DOCKER_HUB = ("index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")


@dataclass(frozen=True, kw_only=True)
class FoundAuth:
    """Credentials for a registry and the file they came from. Never logged."""

    username: str
    password: str = field(repr=False)
    source: Path


def auth_files(env: Mapping[str, str]) -> Iterator[tuple[str, Path]]:
    """The places credentials are looked up, in order: ("containers", auth.json),
    ("docker", config.json) or ("dockercfg", ~/.dockercfg)."""
    home = Path(env.get("HOME") or "~").expanduser()
    if env.get("REGISTRY_AUTH_FILE"):
        yield "containers", Path(env["REGISTRY_AUTH_FILE"])
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime:
        yield "containers", Path(runtime) / "containers" / "auth.json"
    else:
        yield "containers", Path(f"/run/containers/{os.getuid()}") / "auth.json"
    yield (
        "containers",
        Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "containers/auth.json",
    )
    yield "docker", Path(env.get("DOCKER_CONFIG") or home / ".docker") / "config.json"
    yield "dockercfg", home / ".dockercfg"


def find_auth(url: str, env: Mapping[str, str]) -> FoundAuth | None:
    """Credentials for the registry at `url` (host[/namespace]) from the first file that has
    an entry for it (see the module); None when none has."""
    from shipit import docker_api  # noqa: PLC0415 (keeps the Docker SDK out of `plan`)

    for kind, path in auth_files(env):
        if kind == "docker":
            found = docker_api.config_auth(url.partition("/")[0], env) if path.is_file() else None
            if found is not None:
                return FoundAuth(username=found.username, password=found.password, source=path)
            continue
        document = _read_json(path)
        if document is None:
            continue
        entries = document.get("auths") if kind == "containers" else document
        entry = _entry_for(url, entries if isinstance(entries, dict) else {})
        if entry is None:
            continue
        decoded = _decode(entry)
        if decoded is None:
            _log.warning("the entry for %s in %s holds no username and password", url, path)
            continue
        return FoundAuth(username=decoded[0], password=decoded[1], source=path)
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        _log.warning("cannot read registry credentials from %s: %s", path, exc)
        return None
    return document if isinstance(document, dict) else None


def _key(text: str) -> str:
    """An auth file's key as a host[/namespace]: no scheme, no /v1/ or /v2/, Docker Hub's
    hosts as docker.io."""
    had_scheme = "://" in text
    key = text.partition("://")[2] if had_scheme else text
    if had_scheme:
        key = key.partition("/")[0]  # the old Docker form: a URL to the host
    host, slash, rest = key.rstrip("/").partition("/")
    host = "docker.io" if host in _DOCKER_HUB else host
    return f"{host}{slash}{rest}" if rest else host


def _entry_for(url: str, entries: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The entry of the most specific key that `url` is, or starts with."""
    keyed = {_key(k): v for k, v in entries.items() if isinstance(v, dict)}
    parts = _key(url).split("/")
    for end in range(len(parts), 0, -1):
        found = keyed.get("/".join(parts[:end]))
        if found is not None:
            return found
    return None


def _decode(entry: Mapping[str, Any]) -> tuple[str, str] | None:
    token = entry.get("auth")
    if isinstance(token, str) and token:
        try:
            username, sep, password = base64.b64decode(token).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return (username, password) if sep and username else None
    user, secret = entry.get("username"), entry.get("password")
    if isinstance(user, str) and isinstance(secret, str) and user and secret:
        return user, secret
    return None


# -- registries.conf -------------------------------------------------------------------------


def registries_conf(env: Mapping[str, str]) -> Path | None:
    """The registries.conf the containers tools read: the user's, else the system's."""
    home = Path(env.get("HOME") or "~").expanduser()
    for path in (
        home / ".config/containers/registries.conf",
        Path("/etc/containers/registries.conf"),
    ):
        if path.is_file():
            return path
    return None


def insecure_registries(text: str) -> frozenset[str]:
    """The registries a registries.conf marks insecure (v2 `[[registry]]` entries and the v1
    `[registries.insecure]` list), as host[:port][/namespace] (pure). ValueError when it is not
    TOML."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(str(exc)) from None
    found: set[str] = set()
    for entry in document.get("registry") or []:
        if not isinstance(entry, dict) or entry.get("insecure") is not True:
            continue
        location = entry.get("location") or entry.get("prefix")
        if isinstance(location, str) and location.strip():
            found.add(_key(location.strip()))
    v1 = (document.get("registries") or {}).get("insecure") or {}
    listed = v1.get("registries") if isinstance(v1, dict) else None
    for location in listed if isinstance(listed, list) else []:
        if isinstance(location, str) and location.strip():
            found.add(_key(location.strip()))
    return frozenset(found)


def is_listed(url: str, listed: frozenset[str]) -> bool:
    """Whether the registry at `url` (host[/namespace]) is, or is below, a listed location."""
    parts = _key(url).split("/")
    return any("/".join(parts[:end]) in listed for end in range(len(parts), 0, -1))


def with_insecure(found: spec.Spec, env: Mapping[str, str]) -> spec.Spec:
    """The spec with every registry that registries.conf marks insecure set `insecure: true`,
    as the spec's own setting would (an unreadable registries.conf is named and passed over)."""
    path = registries_conf(env)
    if path is None:
        return found
    try:
        listed = insecure_registries(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        _log.warning("cannot read %s: %s", path, exc)
        return found
    if not listed:
        return found

    def marked(registries: tuple[spec.Registry, ...]) -> tuple[spec.Registry, ...]:
        return tuple(
            replace(r, insecure=True) if not r.insecure and is_listed(r.url, listed) else r
            for r in registries
        )

    images = tuple(replace(i, registries=marked(i.registries)) for i in found.images)
    return replace(found, images=images)
