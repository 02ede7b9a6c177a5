"""Probing buildx before a build: the plugin is there and recent (`docker buildx version`), and
what a builder is (`docker buildx inspect`: driver, endpoint, the platforms it can build, and
for the docker driver whether its daemon keeps images in containerd).

Facts (buildx 0.29): `docker buildx inspect` prints `Key: value` lines, the builder's first
(Name, Driver, Endpoint), then each node's (Platforms, a comma-separated list where `*` marks
the ones asked for explicitly); `--metadata-file`, `--provenance` and `type=oci,tar=false`
need buildx 0.10.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from shipit import proc
from shipit.errors import StageError
from shipit.stages.build.contexts import last_line, loading_daemon, uses_containerd_store

BUILDX_HINT: Final = (
    "install the docker buildx plugin: Debian's docker-buildx package, or the release binary"
    " from github.com/docker/buildx as ~/.docker/cli-plugins/docker-buildx or"
    " /usr/local/lib/docker/cli-plugins/docker-buildx; or set `engine: sdk`"
)
PROBE_TIMEOUT: Final = 60.0
MIN_VERSION: Final = (0, 10)  # --metadata-file, --provenance and type=oci,tar=false
_VERSION = re.compile(r"\bv?(\d+)\.(\d+)(?:\.\d+)?")


@dataclass(frozen=True, kw_only=True)
class BuilderInfo:
    """What `docker buildx inspect` says about the builder a build will use."""

    name: str
    driver: str  # docker | docker-container | remote | kubernetes | ...
    endpoint: str | None  # for the docker driver: the docker context (daemon) it builds in
    containerd_store: bool  # docker driver only: that daemon keeps images in containerd
    platforms: tuple[str, ...] = ()  # what it can build (natively or through QEMU/binfmt)
    daemon_host: str | None = None  # the daemon it loads into, when not the run's own

    def missing(self, wanted: tuple[str, ...]) -> list[str]:
        """The platforms of `wanted` this builder cannot build (none when it did not say)."""
        if not self.platforms:
            return []
        have = {_normal(p) for p in self.platforms}
        return [p for p in wanted if _normal(p) not in have]

    @property
    def loads(self) -> bool:
        """Whether images come back `--load`ed into a daemon rather than as an OCI layout."""
        return self.driver == "docker" and not self.containerd_store


def find_docker(env: Mapping[str, str]) -> str:
    """The docker CLI on the environment's PATH."""
    return proc.find_tool("docker", env, hint="install the docker CLI (Debian: docker.io)")


def check_buildx(env: Mapping[str, str], passed: Path | None = None) -> str:
    """The docker CLI, once `docker buildx version` proves the plugin is there and recent.

    With `passed` (a folder of shipit's cache), a check that passed is remembered under a
    stamp of the docker CLI and the plugin binary it runs (`buildx_stamp`), and not made
    again while both are the same files: the CLI's start is a tenth of a second or more,
    ahead of every BuildKit build."""
    docker = find_docker(env)
    stamp = buildx_stamp(docker, env) if passed is not None else None
    mark = passed / f"buildx-{stamp}" if passed is not None and stamp is not None else None
    if mark is not None and mark.exists():
        return docker
    argv, child = direct([docker, "buildx", "version"], env)
    result = proc.run(argv, env=child, timeout=PROBE_TIMEOUT, check=False)
    text = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise proc.ToolMissing(
            f"docker buildx is not installed (`docker buildx version` says: {text[-300:]})",
            hint=BUILDX_HINT,
        )
    match = _VERSION.search(text.split(" ", 1)[-1]) if text else None
    if match is None or (int(match[1]), int(match[2])) < MIN_VERSION:
        raise proc.ToolMissing(
            f"docker buildx {match[0] if match else '(no version)'} is too old; shipit needs"
            f" {'.'.join(map(str, MIN_VERSION))} or newer",
            hint=BUILDX_HINT,
        )
    if mark is not None:
        with contextlib.suppress(OSError):  # a cache never fails a run
            mark.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            mark.write_text(text + "\n", encoding="utf-8")
    return docker


# Where the docker CLI looks for plugins, in order (docker/cli, cli-plugins/manager,
# manager_unix.go and its doc comment, read at v26.1): the config folder's `cli-plugins`,
# then config.json's `cliPluginsExtraDirs`, then these.
_SYSTEM_PLUGIN_DIRS: Final = (
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
)


def buildx_plugin(env: Mapping[str, str]) -> Path | None:
    """The `docker-buildx` the docker CLI runs for `docker buildx`: the first on its plugin
    path; None when that cannot be told for sure (a config.json with `cliPluginsExtraDirs`, no
    HOME or DOCKER_CONFIG, no plugin found where the CLI looks)."""
    home = env.get("HOME", "")
    config = Path(env.get("DOCKER_CONFIG") or (Path(home) / ".docker" if home else ""))
    if not str(config):
        return None
    try:
        if "cliPluginsExtraDirs" in (config / "config.json").read_text(encoding="utf-8"):
            return None
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError):
        return None
    for folder in (config / "cli-plugins", *map(Path, _SYSTEM_PLUGIN_DIRS)):
        if (plugin := folder / "docker-buildx").is_file():
            return plugin
    return None


def buildx_stamp(docker: str, env: Mapping[str, str]) -> str | None:
    """A digest of the files `docker buildx version` runs (the CLI and `buildx_plugin`:
    path, inode, size, modification time); None when the plugin cannot be told for sure."""
    plugin = buildx_plugin(env)
    if plugin is None:
        return None
    facts = []
    for path in (Path(docker), plugin):
        try:
            real = path.resolve(strict=True)
            info = real.stat()
        except OSError:
            return None
        facts.append([str(real), info.st_ino, info.st_size, info.st_mtime_ns])
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:32]


# docker/cli's plugin protocol (docs/extend/cli_plugins.md, "Required sub-commands"): the CLI
# runs `docker-NAME [GLOBAL OPTIONS] NAME [OPTIONS...]` (its own argv, the plugin in its
# place) with this variable naming the CLI (cli-plugins/manager, `ReexecEnvvar`); buildx
# without it takes its arguments as a program of its own ("unknown flag: --context").
_REEXEC: Final = "DOCKER_CLI_PLUGIN_ORIGINAL_CLI_COMMAND"
_ELF: Final = b"\x7fELF"


def direct(argv: Sequence[str], env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """A `docker ... buildx ...` command as the docker CLI itself would run it: the buildx
    plugin, with the same arguments, told which CLI it stands for. The CLI's own start, and
    its run of every plugin for its metadata, cost 0.1 s of every buildx command (0.26 s
    against 0.14 s for a cached build, buildx 0.29 and docker 28.2, measured 2026-12-07).

    As it is when the plugin is not known for sure (`buildx_plugin`), or when `docker` is
    not the docker CLI's own program but a script (podman-docker's `docker` runs podman)."""
    plugin = buildx_plugin(env)
    if plugin is None or not _is_program(argv[0]):
        return list(argv), dict(env)
    return [str(plugin), *argv[1:]], {**env, _REEXEC: argv[0]}


def _is_program(path: str) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(len(_ELF)) == _ELF
    except OSError:
        return False


def inspect_builder(
    docker: str,
    builder: str | None,
    env: Mapping[str, str],
    *,
    store_of: Callable[[str | None], bool] | None = None,
) -> BuilderInfo:
    """Ask buildx which driver `builder` (or the current builder) uses, and where it builds.

    `store_of(context)` says whether a docker context's daemon keeps images in containerd
    (by default `uses_containerd_store`, one `docker info`)."""
    argv, child = direct(
        [docker, "buildx", "inspect", *(["--builder", builder] if builder else [])], env
    )
    try:
        result = proc.run(argv, env=child, timeout=PROBE_TIMEOUT)
    except proc.CommandError as exc:
        where = f"the builder {builder}" if builder else "the current builder"
        raise StageError(
            "preflight",
            f"buildx cannot reach {where}: {last_line(exc.result)}",
            hint="`docker buildx ls` lists the builders and docker contexts buildx can use",
        ) from None
    fields = _inspect_fields(result.stdout)
    driver = fields.get("Driver", "")
    endpoint = fields.get("Endpoint")
    store = False
    host = None
    if driver == "docker":
        store = (store_of or functools.partial(uses_containerd_store, docker, env=env))(endpoint)
        if not store:  # images are `--load`ed into that daemon and read back from it
            host = loading_daemon(docker, endpoint, env)
    platforms = tuple(
        p.strip().rstrip("*") for p in fields.get("Platforms", "").split(",") if p.strip()
    )
    return BuilderInfo(
        name=fields.get("Name", builder or "default"),
        driver=driver,
        endpoint=endpoint,
        containerd_store=store,
        platforms=platforms,
        daemon_host=host,
    )


def default_builder_is_the_daemons(env: Mapping[str, str]) -> bool:
    """Whether buildx's current builder is certainly the docker driver of the run's daemon
    (DOCKER_HOST, or the default socket), so that `docker buildx inspect` need not be asked:
    no BUILDX_BUILDER and no DOCKER_CONTEXT (docs.docker.com, "Build variables" and the docker
    CLI's environment variables), no current context in the Docker config's config.json
    (`currentContext`, which `docker context use` writes) but `default`, and no builder chosen
    with `docker buildx use` (buildx writes `$DOCKER_CONFIG/buildx/current` as
    `{"Key": ENDPOINT, "Name": NAME, "Global": BOOL}`, Name "" for the context's own builder:
    seen with buildx 0.29.1). Anything else, or anything unreadable: False."""
    if env.get("BUILDX_BUILDER") or env.get("DOCKER_CONTEXT", "default") != "default":
        return False
    config = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else (
        Path(env.get("HOME", "/nonexistent")) / ".docker"
    )  # fmt: skip
    try:
        for path, key in ((config / "config.json", "currentContext"),
                          (config / "buildx" / "current", "Name")):  # fmt: skip
            if path.exists():
                document = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(document, dict):
                    return False
                if document.get(key) not in (None, "", "default"):
                    return False
    except (OSError, ValueError):
        return False
    return True


def _normal(platform: str) -> str:
    """`linux/arm64/v8` is `linux/arm64` (v8 is arm64's only variant, as containerd has it)."""
    return platform.removesuffix("/v8") if "/arm64" in platform else platform


EMULATION_HINT: Final = (
    "install QEMU for it (Debian: qemu-user-static, then `update-binfmts --enable qemu-ARCH`"
    " with binfmt_misc mounted; or `docker run --privileged tonistiigi/binfmt --install ARCH`),"
    " or build that platform on a native runner of its own (`shipit matrix --by platform`)"
)


def _inspect_fields(text: str) -> dict[str, str]:
    """The first `Key: value` of each key in `docker buildx inspect`'s text (its only form)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and not key.startswith(" "):
            fields.setdefault(key.strip(), value.strip())
    return fields
