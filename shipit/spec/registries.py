"""The `registries:` list: where an image goes (top level, or an image's own list).

Each item is a short `host/namespace` string or a mapping with `url`, `username`,
`password_env` (the name of a variable holding the secret, never the secret), `insecure`,
`ca_file`, and for `shipit prune`: `api` (how it deletes: `github`, `gitlab`, `dockerhub`, or
`registry`, the distribution API; left out, it follows from the host) and `api_url` (that
API's base URL). A bare namespace means Docker Hub, as in `docker`.
"""

from __future__ import annotations

import re

from yaml.nodes import MappingNode, Node

from shipit.spec.nodes import Reader, is_null
from shipit.spec.paths import shown
from shipit.spec.records import Registry

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
# A repository path: lowercase components joined by `/` (also what an image name must be).
REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_HOST = re.compile(r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9-]+)*(?::\d+)?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KEYS = ("url", "username", "password_env", "insecure", "ca_file", "api", "api_url")
APIS = ("github", "gitlab", "dockerhub", "registry")
_API_URL = re.compile(r"https?://[^\s/?#]+(/[^\s?#]*)?")


def read_registries(r: Reader, node: Node | None, image_node: Node) -> tuple[Registry, ...] | None:
    """The image's registries; None (with a problem) when there are none or one is wrong."""
    if node is None:
        r.error(image_node, "no registries for this image: add `registries:`")
        return None
    items = r.sequence(node, "registries")
    if items is None:
        return None
    if not items:
        r.error(node, "`registries` is empty")
        return None
    registries = [_registry(r, item) for item in items]
    if any(reg is None for reg in registries):
        return None
    result = tuple(reg for reg in registries if reg is not None)
    seen: set[str] = set()
    for item, reg in zip(items, result, strict=True):
        if reg.url in seen:
            r.error(item, f"registry '{reg.url}' is listed twice")
        seen.add(reg.url)
    return result


def _registry(r: Reader, node: Node) -> Registry | None:
    if is_null(node) or isinstance(node, MappingNode):
        entries = r.mapping(node, "a registry", _KEYS)
        if entries is None:
            return None
        if "url" not in entries:
            r.error(node, "a registry needs a `url`")
            return None
        url = _url(r, entries["url"])
        password_env = r.field(entries, "password_env", lambda n: _env_name(r, n), None)
        username = r.field(
            entries, "username", lambda n: r.string(n, "username", allow_empty=True), None
        )
        if password_env and "username" not in entries:
            r.error(node, "`password_env` needs a `username` too")
        ca_file = r.field(entries, "ca_file", lambda n: r.existing_file(n, "ca_file"), None)
        insecure = r.field(entries, "insecure", lambda n: r.boolean(n, "insecure"), False)
        api = r.field(entries, "api", lambda n: r.choice(n, "api", APIS), None)
        api_url = r.field(entries, "api_url", lambda n: _api_url(r, n), None)
    else:
        url = _url(r, node)
        username = password_env = None
        ca_file = None
        insecure = False
        api = api_url = None
    if url is None:
        return None
    host, _, namespace = url.partition("/")
    return Registry(
        url=url,
        host=host,
        namespace=namespace,
        username=username or None,
        password_env=password_env,
        insecure=insecure,
        ca_file=ca_file,
        api=api,
        api_url=api_url,
        location=r.loc(node),
    )


def _url(r: Reader, node: Node) -> str | None:
    text = r.string(node, "registry url")
    if text is None:
        return None
    if "://" in text:
        r.error(
            node,
            f"registry url {shown(text)} has a scheme: write the host and namespace only"
            f" (e.g. {shown(text.split('://', 1)[1])}); use `insecure: true` for plain HTTP",
        )
        return None
    text = text.strip("/")
    first, _, rest = text.partition("/")
    if not ("." in first or ":" in first or first == "localhost"):
        first, rest = "docker.io", text  # a bare namespace is on Docker Hub, as in docker
    if not _HOST.fullmatch(first):
        r.error(node, f"{shown(first)} is not a valid registry host")
        return None
    if rest and not REPOSITORY.fullmatch(rest.lower()):
        r.error(node, f"{shown(rest)} is not a valid namespace for registry {first}")
        return None
    return f"{first.lower()}/{rest.lower()}" if rest else first.lower()


def _api_url(r: Reader, node: Node) -> str | None:
    text = r.string(node, "api_url")
    if text is not None and not _API_URL.fullmatch(text):
        r.error(node, f"api_url {shown(text)} must be an http(s) URL, like https://api.github.com")
        return None
    return text.rstrip("/") if text else text


def _env_name(r: Reader, node: Node) -> str | None:
    text = r.string(node, "password_env")
    if text is not None and not _ENV_NAME.fullmatch(text):
        r.error(
            node,
            "password_env names an environment variable (like REGISTRY_TOKEN);"
            " never write the secret itself in the spec",
        )
        return None
    return text
