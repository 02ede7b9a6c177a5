"""Docker contexts as buildx builders: how shipit runs a build on one, and where a
docker-driver builder loads its images.

A docker-driver builder is a docker context (`docker buildx inspect` says `Driver: docker`,
`Endpoint: NAME`). buildx refuses `--builder NAME` for a context that is not the current one
("use `docker --context=NAME buildx` to switch to context", buildx 0.29), so such a build runs
as `docker --context NAME buildx build`; any other builder with `--builder NAME`. On a daemon
with the classic image store the image is `--load`ed into that context's daemon, and shipit
reads it back from there (`docker context inspect NAME`: Endpoints.docker.Host), never from the
run's own DOCKER_HOST. Whether a context's daemon keeps images in containerd instead (then
buildx writes OCI layouts) is one `docker --context NAME info` (`uses_containerd_store`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

from shipit import proc
from shipit.errors import StageError

INSPECT_TIMEOUT: Final = 60.0
DEFAULT_DOCKER_HOST: Final = "unix:///var/run/docker.sock"  # docker-py's, with no DOCKER_HOST


def loading_daemon(docker: str, endpoint: str | None, env: Mapping[str, str]) -> str | None:
    """The DOCKER_HOST of the daemon a docker-driver builder loads its images into, when it is
    not the one the run talks to; None when it is.

    The docker driver's endpoint is a docker context (`docker buildx inspect` says `Endpoint:
    NAME`); `docker context inspect NAME` gives its daemon (Endpoints.docker.Host). shipit
    reads images back from that daemon itself, so it has to be one docker-py reaches with a
    DOCKER_HOST alone: unix:// or tcp:// without TLS."""
    own = env.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    if not endpoint or endpoint == "default":
        return None  # the default context is DOCKER_HOST (or the default socket): the run's
    if "://" in endpoint:
        return None if endpoint == own else endpoint
    argv = [docker, "context", "inspect", endpoint]
    try:
        found = json.loads(proc.run(argv, env=env, timeout=INSPECT_TIMEOUT).stdout)[0]
        docker_endpoint = found["Endpoints"]["docker"]
        host = str(docker_endpoint["Host"])
        tls = bool((found.get("TLSMaterial") or {}).get("docker"))
    except proc.CommandError as exc:
        raise StageError(
            "preflight",
            f"the docker context {endpoint} cannot be read: {last_line(exc.result)}",
        ) from None
    except (ValueError, LookupError, TypeError):
        raise StageError(
            "preflight", f"`docker context inspect {endpoint}` says nothing shipit can read"
        ) from None
    if tls or not host.startswith(("unix://", "tcp://")):
        why = "uses TLS" if tls else f"is at {host}"
        raise StageError(
            "preflight",
            f"the buildx builder {endpoint} loads its images into a daemon that {why}, from"
            " which shipit cannot read them back (it reads unix:// and plain tcp:// daemons)",
            hint=f"create a builder there that returns OCI layouts: `docker buildx create"
            f" --name farm --driver docker-container {endpoint}`, then `builder: farm`;"
            " or turn on the containerd image store of that daemon",
        )
    return None if host == own else host


def daemon_cli(
    docker: str, context: str | None, env: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The docker CLI pointed at a builder's daemon (a context name, or a daemon URL)."""
    argv = [docker, *(["--context", context] if context and "://" not in context else [])]
    child = dict(env)
    if context and "://" in context:
        child["DOCKER_HOST"] = context
    return argv, child


def uses_containerd_store(docker: str, context: str | None, env: Mapping[str, str]) -> bool:
    """Whether the daemon of docker context `context` keeps images in containerd."""
    argv, child = daemon_cli(docker, context, env)
    argv += ["info", "--format", "{{json .DriverStatus}}"]
    try:
        result = proc.run(argv, env=child, timeout=INSPECT_TIMEOUT)
    except proc.CommandError as exc:
        raise StageError(
            "preflight",
            f"the daemon of builder context {context} does not answer: {last_line(exc.result)}",
        ) from None
    return "io.containerd.snapshotter" in result.stdout


def builder_argv(docker: str, *, driver: str, endpoint: str | None, name: str) -> list[str]:
    """`docker --context NAME buildx` for a docker-driver builder (a docker context), else
    `docker buildx --builder NAME`; the buildx subcommand comes next."""
    if driver == "docker" and endpoint and "://" not in endpoint:
        return [docker, "--context", endpoint, "buildx"]
    return [docker, "buildx", "--builder", name]


def last_line(result: proc.Result) -> str:
    """The last line a failed command printed (stderr first), for an error message."""
    lines = [x.strip() for x in (result.stderr or result.stdout).splitlines() if x.strip()]
    return lines[-1] if lines else f"exit {result.returncode}"
