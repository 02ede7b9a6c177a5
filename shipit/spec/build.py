"""How an image is built: the engine and its BuildKit keys (DESIGN section 8).

`engine: sdk` (the default) is docker-py's classic builder; `engine: buildx` is BuildKit
through `docker buildx build`. The keys only BuildKit has (`builder`, `secrets`, `ssh`,
`cache_to`, and `type=` cache sources) and a Dockerfile that needs BuildKit (a `# syntax=`
line, `RUN --mount`, heredocs, `--link`) are located errors under `sdk` that say to set
`engine: buildx`. `platform: X` is shorthand for `platforms: [X]`.

`engine`, `builder`, `platforms`/`platform` and `network` may stand at the top of the spec as
defaults for every image (an image's own replaces them whole).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from yaml.nodes import MappingNode, Node

from shipit.spec.nodes import Reader, key_node
from shipit.spec.paths import shown
from shipit.spec.records import BuildOptions, BuildSecret
from shipit.spec.sections import inherited

ENGINES: Final = ("sdk", "buildx")
NETWORKS: Final = ("default", "none", "host")
INHERITED: Final = ("engine", "builder", "platforms", "platform", "network")
KEYS: Final = (*INHERITED, "secrets", "ssh", "cache_from", "cache_to", "no_cache")
BUILDKIT_ONLY: Final = ("builder", "secrets", "ssh", "cache_to")
MAX_DOCKERFILE: Final = 1024 * 1024  # read this much of a Dockerfile to look for BuildKit syntax

_PLATFORM = re.compile(r"[a-z0-9]+/[a-z0-9_]+(?:/[a-z0-9]+)?")
_SECRET_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SSH = re.compile(r"[A-Za-z0-9_.-]{1,128}(?:=.+)?")
# what only BuildKit's Dockerfile frontend understands (docs.docker.com/reference/dockerfile)
_BUILDKIT_SYNTAX: Final = (
    (re.compile(r"^\s*#\s*syntax\s*=", re.IGNORECASE), "a `# syntax=` directive"),
    (re.compile(r"^\s*(RUN)\s+(?:--\S+\s+)*(--(?:mount|network|security))\b", re.IGNORECASE),
     "{0} {1}"),
    (re.compile(r"^\s*(?:RUN|COPY|ADD)\b(?:.*\s)?<<-?['\"]?[A-Za-z_]\w*['\"]?\s*$",
                re.IGNORECASE), "a heredoc (<<EOF)"),
    (re.compile(r"^\s*(COPY|ADD)\s+(?:--\S+\s+)*(--(?:link|parents|exclude))\b",
                re.IGNORECASE), "{0} {1}"),
    (re.compile(r"^\s*(ADD)\s+(?:--\S+\s+)*(--(?:checksum|keep-git-dir))\b", re.IGNORECASE),
     "{0} {1}"),
)  # fmt: skip


def read_build(
    r: Reader,
    image: Node,
    top: Mapping[str, Node],
    entries: Mapping[str, Node],
    dockerfile: Path | None,
) -> BuildOptions:
    """The image's build options; `dockerfile` (when it exists) is checked under `sdk`."""
    own = _own_or_top(top, entries)
    engine = r.field(own, "engine", lambda n: r.choice(n, "engine", ENGINES), "sdk")
    options = BuildOptions(
        engine=engine,
        builder=r.field(own, "builder", lambda n: r.string(n, "builder"), None),
        platforms=_platforms(r, top, entries),
        secrets=r.field(entries, "secrets", lambda n: _secrets(r, n), ()),
        ssh=r.field(entries, "ssh", lambda n: _ssh(r, n), ()),
        cache_from=r.field(entries, "cache_from", lambda n: _caches(r, n, "cache_from"), ()),
        cache_to=r.field(entries, "cache_to", lambda n: _caches(r, n, "cache_to"), ()),
        network=r.field(own, "network", lambda n: r.choice(n, "network", NETWORKS), None),
        no_cache=r.field(entries, "no_cache", lambda n: r.boolean(n, "no_cache"), False),
    )
    if engine == "sdk":
        _check_sdk(r, image, {**own, **entries}, options, dockerfile)
    return options


def _own_or_top(top: Mapping[str, Node], entries: Mapping[str, Node]) -> dict[str, Node]:
    """The inheritable keys, each from the image if it has it, else from the top."""
    return {key: node for key in INHERITED if (node := inherited(key, top, entries)) is not None}


def _platforms(r: Reader, top: Mapping[str, Node], entries: Mapping[str, Node]) -> tuple[str, ...]:
    # the image's own `platform`/`platforms` replaces the top one, whichever spelling each uses
    source = entries if ("platform" in entries or "platforms" in entries) else top
    one, many = source.get("platform"), source.get("platforms")
    if one is not None and many is not None:
        r.error(many, "use either `platform:` (one) or `platforms:` (a list), not both")
        return ()
    if one is not None:
        value = _platform(r, one)
        return (value,) if value else ()
    if many is None:
        return ()
    items = r.sequence(many, "platforms")
    if items is None:
        return ()
    if not items:
        r.error(many, "`platforms` is empty: leave it out to build for the builder's platform")
        return ()
    found = [p for p in (_platform(r, item) for item in items) if p]
    if len(set(found)) != len(found):
        r.error(many, "a platform is listed twice in `platforms`")
    return tuple(dict.fromkeys(found))


def _platform(r: Reader, node: Node) -> str | None:
    text = r.string(node, "platform")
    if text is not None and not _PLATFORM.fullmatch(text):
        r.error(node, f"platform {shown(text)} must look like linux/amd64 or linux/arm64/v8")
        return None
    return text


def _secrets(r: Reader, node: Node) -> tuple[BuildSecret, ...] | None:
    entries = r.mapping(node, "secrets")
    if entries is None:
        return None
    found = []
    for secret_id, value in entries.items():
        if not _SECRET_ID.fullmatch(secret_id):
            where = key_node(node, secret_id) or value
            r.error(where, f"secret id '{secret_id}' must be letters, digits, . _ -")
            continue
        secret = _secret(r, secret_id, value)
        if secret is not None:
            found.append(secret)
    return tuple(found)


def _secret(r: Reader, secret_id: str, node: Node) -> BuildSecret | None:
    what = f"secret {secret_id}"
    if not isinstance(node, MappingNode):
        r.error(node, f"{what} must be {{env: VARIABLE}} or {{file: PATH}}, never the value")
        return None
    source = r.mapping(node, what, ("env", "file"))
    if source is None:
        return None
    if len(source) != 1:
        r.error(node, f"{what} takes exactly one of `env` or `file`")
        return None
    if "env" in source:
        name = r.string(source["env"], f"{what} env")
        if name is not None and not _VARIABLE.fullmatch(name):
            r.error(source["env"], f"{what}: env names a variable (like NPM_TOKEN), not a value")
            return None
        return BuildSecret(id=secret_id, env=name) if name else None
    text = r.string(source["file"], f"{what} file")
    if text is None:
        return None
    path = _secret_path(r, source["file"], f"{what} file", text)
    return BuildSecret(id=secret_id, file=path) if path else None


def _secret_path(r: Reader, node: Node, what: str, text: str) -> Path | None:
    """The secret file, from the spec's folder or from HOME (`~/`); it need not exist yet."""
    if not text.startswith("~/"):
        return r.resolve(node, what, text)
    home = r.env.get("HOME")
    try:
        base = Path(home) if home else Path("~").expanduser()
    except RuntimeError:  # no HOME and no entry in the password database
        r.error(node, f"{what} starts with ~/ but HOME is not set")
        return None
    return r.resolve(node, what, text[2:], base=base)


def _caches(r: Reader, node: Node, what: str) -> tuple[str, ...] | None:
    """Cache sources or targets. In a YAML flow list `[type=registry,ref=r.io/a:cache]` the
    commas split one BuildKit entry into several items (YAML's rule); an item that is a bare
    `key=value` right after a `type=` item is the rest of that entry, so it is joined back."""
    values = r.string_list(node, what)
    if values is None:
        return None
    joined: list[str] = []
    for value in values:
        if (
            joined
            and joined[-1].startswith("type=")
            and "=" in value
            and not value.startswith("type=")
        ):
            joined[-1] += f",{value}"
        else:
            joined.append(value)
    return tuple(joined)


def _ssh(r: Reader, node: Node) -> tuple[str, ...] | None:
    values = r.string_list(node, "ssh")
    if values is None:
        return None
    for value in values:
        if not _SSH.fullmatch(value):
            r.error(node, f"ssh entry {shown(value)} must be `default`, an id, or id=PATH")
            return None
    return values


def _check_sdk(
    r: Reader,
    image: Node,
    entries: Mapping[str, Node],
    options: BuildOptions,
    dockerfile: Path | None,
) -> None:
    """Under `engine: sdk`: what only BuildKit can do is an error that says so, at its place."""
    hint = "needs BuildKit: set `engine: buildx`"
    for key in BUILDKIT_ONLY:
        if key in entries:
            r.error(entries[key], f"`{key}` {hint}")
    for source in options.cache_from:
        if source.startswith("type=") or ",type=" in source:
            r.error(
                entries["cache_from"], f"cache_from {shown(source)} is a BuildKit cache and {hint}"
            )
    if dockerfile is not None:
        found = buildkit_syntax(dockerfile)
        if found is not None:
            line, what = found
            r.error(
                entries.get("dockerfile") or image,
                f"{dockerfile.name} line {line} uses {what}, which {hint}",
            )


def buildkit_syntax(dockerfile: Path) -> tuple[int, str] | None:
    """The first line of `dockerfile` that only BuildKit understands, and what it is."""
    try:
        with dockerfile.open("rb") as handle:
            text = handle.read(MAX_DOCKERFILE).decode("utf-8", errors="replace")
    except (OSError, ValueError):
        return None  # unreadable: the build itself will say so
    for number, line in enumerate(text.splitlines(), start=1):
        for pattern, what in _BUILDKIT_SYNTAX:
            if match := pattern.search(line):
                words = [g.upper() if g.isalpha() else g.lower() for g in match.groups()]
                return number, what.format(*words)
    return None
