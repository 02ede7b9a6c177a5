"""How an image is built: the engine and its BuildKit keys (DESIGN section 8).

`engine: sdk` (the default) is docker-py's `/build` (the classic builder; on the containerd
image store the daemon's BuildKit, with the classic builder's limits kept); `engine: buildx`
is BuildKit through `docker buildx build`; `engine: buildah` is the buildah CLI, with no
daemon. The keys only BuildKit has (`builder`, `secrets`, `ssh`, `cache_to`, and `type=`
cache sources) and a Dockerfile that needs BuildKit (a `# syntax=` line, `RUN --mount`,
heredocs, `--link`) are located errors under `sdk` that say to set `engine: buildx`. Under
`buildah`, what buildah cannot do is a located error too: `builder`, a cache that is not a
registry repository, and the Dockerfile syntax Debian 12's buildah 1.28 refuses (heredocs,
which it misreads as instructions, `COPY`/`ADD --link`, `--parents`, `--exclude`, `ADD
--checksum`, `--keep-git-dir`, `RUN --network`, `--security`; it does build `RUN --mount`).
`isolation` (chroot, oci, rootless: how buildah runs `RUN` steps) is buildah's alone.
`platform: X` is shorthand for `platforms: [X]`.

`engine`, `builder`, `platforms`/`platform`, `network` and `isolation` may stand at the top of
the spec as defaults for every image (an image's own replaces them whole).
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

ENGINES: Final = ("sdk", "buildx", "buildah")
NETWORKS: Final = ("default", "none", "host")
# buildah build --isolation (buildah-build(1)): chroot works in an unprivileged container
ISOLATIONS: Final = ("chroot", "oci", "rootless")
INHERITED: Final = ("engine", "builder", "platforms", "platform", "network", "isolation")
KEYS: Final = (*INHERITED, "secrets", "ssh", "cache_from", "cache_to", "no_cache")
BUILDKIT_ONLY: Final = ("builder", "secrets", "ssh", "cache_to")
BUILDX_ONLY: Final = ("builder",)  # what buildah has no equivalent of
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
# what buildah 1.28 (Debian 12) refuses or misreads, checked with it: heredocs are taken for
# instructions ("Unknown instruction"), the flags are refused ("COPY only supports the
# --chmod=<permissions> --chown=<uid:gid> and the --from=<image|stage> flags", "RUN only
# supports the --mount flag")
_BUILDAH_REFUSES: Final = (
    _BUILDKIT_SYNTAX[2],
    (re.compile(r"^\s*(RUN)\s+(?:--\S+\s+)*(--(?:network|security))\b", re.IGNORECASE),
     "{0} {1}"),
    *_BUILDKIT_SYNTAX[3:],
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
    named = r.field(own, "engine", lambda n: r.choice(n, "engine", ENGINES), None)
    engine = named or "sdk"
    isolation = r.field(own, "isolation", lambda n: r.choice(n, "isolation", ISOLATIONS), None)
    options = BuildOptions(
        engine=engine,
        engine_default="engine" not in own,
        builder=r.field(own, "builder", lambda n: r.string(n, "builder"), None),
        platforms=_platforms(r, top, entries),
        secrets=r.field(entries, "secrets", lambda n: _secrets(r, n), ()),
        ssh=r.field(entries, "ssh", lambda n: _ssh(r, n), ()),
        cache_from=r.field(entries, "cache_from", lambda n: _caches(r, n, "cache_from"), ()),
        cache_to=r.field(entries, "cache_to", lambda n: _caches(r, n, "cache_to"), ()),
        network=r.field(own, "network", lambda n: r.choice(n, "network", NETWORKS), None),
        no_cache=r.field(entries, "no_cache", lambda n: r.boolean(n, "no_cache"), False),
        isolation=isolation if engine == "buildah" else None,  # a top default: buildah's
    )
    if engine == "sdk":
        _check_sdk(r, image, {**own, **entries}, options, dockerfile)
    if engine == "buildah":
        _check_buildah(r, image, {**own, **entries}, options, dockerfile)
    elif "isolation" in entries:
        r.error(entries["isolation"], "`isolation` is buildah's: set `engine: buildah`")
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


def _check_buildah(
    r: Reader,
    image: Node,
    entries: Mapping[str, Node],
    options: BuildOptions,
    dockerfile: Path | None,
) -> None:
    """Under `engine: buildah`: what buildah cannot do is an error at its place."""
    hint = "buildah cannot do it: set `engine: buildx`"
    for key in BUILDX_ONLY:
        if key in entries:
            r.error(entries[key], f"`{key}` is buildx's; {hint}")
    for key in ("cache_from", "cache_to"):
        for entry in getattr(options, key):
            if buildah_cache(entry) is None:
                r.error(
                    entries[key],
                    f"{key} {shown(entry)}: buildah caches in a registry repository only"
                    " (`REGISTRY/REPOSITORY` or `type=registry,ref=...`); set `engine: buildx`"
                    " for other caches",
                )
    if options.network == "none" and options.isolation in (None, "chroot"):
        r.error(
            entries["network"],
            "`network: none` needs `isolation: oci` (or rootless) under buildah: its chroot"
            " isolation, shipit's default, runs RUN steps on the host's network and buildah"
            " refuses any other with it",
        )
    if dockerfile is not None:
        found = buildkit_syntax(dockerfile, _BUILDAH_REFUSES)
        if found is not None:
            line, what = found
            r.error(
                entries.get("dockerfile") or image,
                f"{dockerfile.name} line {line} uses {what}, which buildah 1.28 (Debian 12)"
                " does not build; set `engine: buildx`",
            )


def buildah_cache(entry: str) -> str | None:
    """The repository buildah's `--cache-from`/`--cache-to` take for a cache entry: the entry
    itself (`ghcr.io/acme/api-cache`), or the `ref` of a `type=registry` one (BuildKit's
    spelling, so one spec works under both engines; `mode=` is ignored: buildah keeps every
    layer); None for any other kind of cache."""
    if "=" not in entry:
        return entry if entry.strip() and "," not in entry else None
    fields = {}
    for part in entry.split(","):
        key, _, value = part.partition("=")
        fields[key.strip()] = value.strip()
    if fields.get("type") != "registry" or not fields.get("ref"):
        return None
    if set(fields) - {"type", "ref", "mode"}:
        return None
    return fields["ref"]


def buildkit_syntax(
    dockerfile: Path, patterns: tuple[tuple[re.Pattern[str], str], ...] = _BUILDKIT_SYNTAX
) -> tuple[int, str] | None:
    """The first line of `dockerfile` that matches one of `patterns` (by default: what only
    BuildKit understands), and what it is."""
    try:
        with dockerfile.open("rb") as handle:
            text = handle.read(MAX_DOCKERFILE).decode("utf-8", errors="replace")
    except (OSError, ValueError):
        return None  # unreadable: the build itself will say so
    for number, line in enumerate(text.splitlines(), start=1):
        for pattern, what in patterns:
            if match := pattern.search(line):
                words = [g.upper() if g.isalpha() else g.lower() for g in match.groups()]
                return number, what.format(*words)
    return None
