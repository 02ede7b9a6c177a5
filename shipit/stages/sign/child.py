"""The environment of a cosign child: registry credentials in a temporary DOCKER_CONFIG, a
registry's private CA in a temporary bundle, and which values must never be shown.

Secrets never reach a command line: the key's password goes through COSIGN_PASSWORD, registry
credentials through a temporary DOCKER_CONFIG folder, and a GitLab OIDC token through
SIGSTORE_ID_TOKEN, all in the child's environment only.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import ssl
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final

from shipit.registry import DOCKER_HUB_HOSTS
from shipit.stages.sign.records import SignTarget

_DOCKER_HUB_AUTH_KEY: Final = "https://index.docker.io/v1/"
_SYSTEM_CA_FILES: Final = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/ssl/cert.pem",  # macOS, BSDs
)


def docker_config(target: SignTarget) -> dict[str, dict[str, dict[str, str]]]:
    """A docker config.json holding only this target's credentials."""
    if target.username is None or target.password is None:
        return {"auths": {}}
    token = base64.b64encode(f"{target.username}:{target.password}".encode()).decode()
    keys = [target.host]
    if target.host in DOCKER_HUB_HOSTS:
        keys.append(_DOCKER_HUB_AUTH_KEY)  # the key cosign's keychain looks up for Docker Hub
    return {"auths": {key: {"auth": token} for key in keys}}


@contextlib.contextmanager
def cosign_env(target: SignTarget, env: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """The environment of a cosign child for `target`, with its temporary files.

    Credentials go to a temporary DOCKER_CONFIG (mode 0600); without them the user's own
    docker config stays visible. A `ca_file` is added to the system CAs in a temporary
    bundle named by SSL_CERT_FILE. Everything temporary is removed afterwards. An OSError
    (an unreadable ca_file, a full disk) passes through.
    """
    child = dict(env)
    if target.username is None and target.ca_file is None:
        yield child
        return
    folder = Path(tempfile.mkdtemp(prefix="shipit-cosign-"))
    try:
        if target.username is not None:
            _write_private(folder / "config.json", json.dumps(docker_config(target)))
            child["DOCKER_CONFIG"] = str(folder)
        if target.ca_file is not None:
            child["SSL_CERT_FILE"] = str(_ca_bundle(folder, target.ca_file, env))
        yield child
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def _ca_bundle(folder: Path, ca_file: Path, env: Mapping[str, str]) -> Path:
    extra = ca_file.read_text(encoding="utf-8", errors="replace")
    system = system_ca_file(env)
    base = system.read_text(encoding="utf-8", errors="replace") if system else ""
    bundle = folder / "ca-bundle.pem"
    bundle.write_text(f"{base.rstrip()}\n{extra.strip()}\n".lstrip(), encoding="utf-8")
    return bundle


def system_ca_file(env: Mapping[str, str]) -> Path | None:
    """The system's CA bundle (or the one SSL_CERT_FILE already names), if there is one."""
    paths = ssl.get_default_verify_paths()
    candidates = [env.get("SSL_CERT_FILE"), paths.cafile, paths.openssl_cafile, *_SYSTEM_CA_FILES]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def secrets_of(env: Mapping[str, str], targets: Sequence[SignTarget], key: str | None) -> list[str]:
    """Every value that must never be shown: passwords, tokens, a key held in a variable."""
    names = ["COSIGN_PASSWORD", "SIGSTORE_ID_TOKEN", "ACTIONS_ID_TOKEN_REQUEST_TOKEN"]
    if key and key.startswith("env://"):
        names.append(key.removeprefix("env://"))
    values = [env.get(name) for name in names]
    values += [t.password for t in targets]
    return [v for v in dict.fromkeys(values) if v]
