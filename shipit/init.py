"""`shipit init`: a starter shipit.yml for a repository, and the CI snippet that runs it.

The guesses are pure functions of facts: the CI variables, the git remote, where the
Dockerfile is (`guess_registry`, `image_name`, `spec_text`, `ci_snippet`). `init` is the
small I/O around them: read the remote, look for a Dockerfile, check the text parses as a
spec, write the file (never over one, unless forced).

Registries, first match wins: GitHub Actions (`GITHUB_REPOSITORY_OWNER`) or a github.com
remote -> `ghcr.io/<owner>` with the workflow's token; GitLab CI (`CI_REGISTRY_IMAGE`) or a
GitLab remote -> the project's registry with the job's credentials; else `localhost:5000`.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final
from urllib.parse import urlsplit

from shipit import spec as spec_mod
from shipit.errors import UsageError
from shipit.gather import locate, remote_url

ACTION: Final = "OWNER/shipit@v1"
CHECKOUT: Final = "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683  # v4.2.2"
SETUP_TRIVY: Final = "aquasecurity/setup-trivy@81e514348e19b6112ce2a7e3ecbafe19c1e1f567  # v0.3.1"
COSIGN_INSTALLER: Final = (
    "sigstore/cosign-installer@6f9f17788090df1f26f669e9d70d6ae9567deba6  # v4.1.2"
)
GITLAB_TEMPLATE: Final = "https://raw.githubusercontent.com/OWNER/shipit/v1/.gitlab-ci-template.yml"
LOCAL_REGISTRY: Final = "localhost:5000"
DOCKERFILES: Final = ("Dockerfile", "Containerfile")
SKIPPED_FOLDERS: Final = frozenset({"node_modules", "vendor", "venv", "__pycache__"})
SEARCH_DEPTH: Final = 4  # folders below the root
SEARCH_LIMIT: Final = 2000  # folders looked into, at most

_NAME_COMPONENT = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")


@dataclass(frozen=True, kw_only=True)
class RegistryGuess:
    """Where images go, as the spec will say it, and why shipit thinks so."""

    provider: str  # github | gitlab | local
    url: str  # as written in the spec: may hold ${VAR:-default}
    shown: str  # the url with variables resolved here, for messages
    username: str | None = None
    password_env: str | None = None
    repository: str | None = None  # the repository's name, if CI or the remote says it
    source: str = "no CI variables, no GitHub or GitLab remote"


@dataclass(frozen=True, kw_only=True)
class Facts:
    """Everything the starter spec and the CI snippet depend on."""

    registry: RegistryGuess
    name: str
    context: str = "."  # relative to the spec's folder, forward slashes
    dockerfile: str = "Dockerfile"
    dockerfile_found: bool = True
    working_directory: str | None = None  # -C relative to the repository root, for CI
    spec_file: str | None = None  # -f, when not the default


@dataclass(frozen=True, kw_only=True)
class InitResult:
    path: Path
    facts: Facts
    snippet: str  # the CI snippet for the detected provider ("" when local)
    warnings: tuple[str, ...] = ()


# -- the guesses (pure) ------------------------------------------------------------------


def parse_remote(url: str | None) -> tuple[str, str] | None:
    """(host, path) of a git remote: `git@host:a/b.git`, `https://u@host/a/b`, `ssh://...`."""
    if not url:
        return None
    scp = re.fullmatch(r"(?:[^@/]+@)?([^:/]+):(?!/)(.+)", url)
    if scp and "://" not in url:
        host, path = scp.group(1), scp.group(2)
    else:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https", "ssh", "git") or not parts.hostname:
            return None
        host, path = parts.hostname, parts.path
    path = path.strip("/").removesuffix(".git").strip("/")
    return (host.lower(), path) if path else None


def guess_registry(env: Mapping[str, str], remote: str | None) -> RegistryGuess:
    """The registry a starter spec pushes to: CI variables first, then the git remote."""
    if owner := env.get("GITHUB_REPOSITORY_OWNER"):
        name = env.get("GITHUB_REPOSITORY", "").partition("/")[2] or None
        return _github(owner, name, "from GITHUB_REPOSITORY_OWNER")
    if image := env.get("CI_REGISTRY_IMAGE"):
        name = env.get("CI_PROJECT_NAME") or image.rstrip("/").rpartition("/")[2] or None
        return _gitlab(image.lower(), name, "from CI_REGISTRY_IMAGE")
    parsed = parse_remote(remote)
    if parsed:
        host, path = parsed
        segments = path.split("/")
        if host == "github.com" and len(segments) == 2:
            return _github(segments[0], segments[1], f"from the git remote {host}/{path}")
        if "gitlab" in host and len(segments) >= 2:
            registry = "registry.gitlab.com" if host == "gitlab.com" else f"registry.{host}"
            image = f"{registry}/{path.lower()}"
            return _gitlab(image, segments[-1], f"from the git remote {host}/{path}")
    name = None
    if parsed:
        name = parsed[1].rpartition("/")[2]
    return RegistryGuess(
        provider="local", url=LOCAL_REGISTRY, shown=LOCAL_REGISTRY, repository=name
    )


def _github(owner: str, repository: str | None, source: str) -> RegistryGuess:
    url = f"ghcr.io/{owner.lower()}"
    return RegistryGuess(
        provider="github",
        url=url,
        shown=url,
        username=f"${{GITHUB_ACTOR:-{owner}}}",
        password_env="GITHUB_TOKEN",  # noqa: S106 (the variable's name, not a secret)
        repository=repository,
        source=source,
    )


def _gitlab(image: str, repository: str | None, source: str) -> RegistryGuess:
    return RegistryGuess(
        provider="gitlab",
        url=f"${{CI_REGISTRY_IMAGE:-{image}}}",
        shown=image,
        username="${CI_REGISTRY_USER:-gitlab-ci-token}",
        password_env="CI_REGISTRY_PASSWORD",  # noqa: S106 (the variable's name)
        repository=repository,
        source=source,
    )


def image_name(text: str | None, fallback: str = "app") -> str:
    """A valid image name from a repository or folder name: `My_Repo.js` -> `my_repo.js`."""
    name = re.sub(r"[^a-z0-9._-]+", "-", (text or "").lower())
    name = re.sub(r"[._-]*-[._-]*|[._-]{2,}", "-", name).strip("._-")
    return name if _NAME_COMPONENT.fullmatch(name) else fallback


def spec_text(facts: Facts) -> str:
    """The starter shipit.yml."""
    lines = [
        "# shipit.yml, written by `shipit init`. `shipit plan` shows what a CI run would do",
        "# (no Docker needed), `shipit validate` checks this file, and `shipit schema` prints",
        "# its JSON Schema for editors.",
        "version: 1",
        "registries:",
        *_registry_lines(facts.registry),
        "image:",
        f"  name: {facts.name}",
        _commented(f"  context: {_yaml_text(facts.context)}", "relative to this file"),
    ]
    if facts.dockerfile != "Dockerfile":
        lines.append(_commented(f"  dockerfile: {facts.dockerfile}", "relative to the context"))
    lines += [
        "  # No `tags:`, so the defaults: on a release tag (v1.2.3) the version, 1.2 and 1, and",
        "  # `latest` for the newest release; the branch name; pr-N on pull requests; sha-<7 hex>.",
        "scan:",
        _commented("  fail_on: HIGH", "Trivy's findings at HIGH or CRITICAL block the release"),
        "# Sign every pushed digest with cosign. With no key, CI signs keyless (OIDC): on GitHub",
        "# the job needs `permissions: id-token: write`, on GitLab",
        "# `id_tokens: {SIGSTORE_ID_TOKEN: {aud: sigstore}}`.",
        "# sign:",
        _commented("#   key: env://COSIGN_PRIVATE_KEY", "or a key: a file, env://VAR or a KMS URI"),
    ]
    return "\n".join(lines) + "\n"


def _registry_lines(registry: RegistryGuess) -> list[str]:
    if registry.provider == "github":
        comment = [
            "  # GitHub's registry. In Actions GITHUB_TOKEN is the workflow's token (with",
            "  # `packages: write`); on a laptop, a personal token with write:packages.",
        ]
    elif registry.provider == "gitlab":
        comment = [
            "  # The project's registry. GitLab sets these variables in every job; on a",
            "  # laptop, export CI_REGISTRY_USER and CI_REGISTRY_PASSWORD (a token with",
            "  # the write_registry scope).",
        ]
    else:
        return [
            "  # No GitHub or GitLab found, so a local registry:",
            "  #   docker run -d -p 5000:5000 registry:2",
            f"  - {registry.url}",
        ]
    return [
        *comment,
        f"  - url: {registry.url}",
        f"    username: {registry.username}",
        _commented(f"    password_env: {registry.password_env}", "the variable, never the secret"),
    ]


def _commented(line: str, comment: str, column: int = 40) -> str:
    return f"{line.ljust(column - 1)} # {comment}"


def _yaml_text(text: str) -> str:
    """A path as a YAML scalar: plain when that reads back as the same string."""
    if re.fullmatch(r"[A-Za-z0-9_./-]+", text) and text not in ("true", "false", "null", "~"):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ci_snippet(facts: Facts) -> str:
    """The CI configuration that runs shipit for the detected provider ("" for local)."""
    if facts.registry.provider == "github":
        return _github_workflow(facts)
    if facts.registry.provider == "gitlab":
        return _gitlab_include(facts)
    return ""


def _github_workflow(facts: Facts) -> str:
    inputs = []
    if facts.working_directory:
        inputs.append(f"          working-directory: {_yaml_text(facts.working_directory)}")
    if facts.spec_file:
        inputs.append(f"          spec: {_yaml_text(facts.spec_file)}")
    inputs.append("          push: ${{ github.event_name != 'pull_request' }}")
    return "\n".join(
        [
            "name: release",
            "on:",
            "  push:",
            "    branches: [main]",
            '    tags: ["v*"]',
            "  pull_request:",
            "jobs:",
            "  release:",
            "    runs-on: ubuntu-latest",
            "    permissions:",
            "      contents: read",
            "      packages: write    # push to ghcr.io",
            "      id-token: write    # keyless signing, once `sign:` is on",
            "    steps:",
            f"      - uses: {CHECKOUT}",
            "        with:",
            "          fetch-depth: 0  # shipit derives the version from the history and tags",
            "          persist-credentials: false",
            "      - name: Install Trivy (shipit runs `trivy` from PATH)",
            f"        uses: {SETUP_TRIVY}",
            "        with:",
            "          version: v0.76.0",
            "      - name: Install cosign (for `sign:`)",
            f"        uses: {COSIGN_INSTALLER}",
            f"      - uses: {ACTION}",
            "        with:",
            *inputs,
            "        env:",
            "          GITHUB_TOKEN: ${{ github.token }}",
        ]
    )


def _gitlab_include(facts: Facts) -> str:
    lines = ["include:", f"  - remote: {GITLAB_TEMPLATE}"]
    spec_path = PurePosixPath(facts.working_directory or ".") / (facts.spec_file or "shipit.yml")
    if str(spec_path) != "shipit.yml":
        lines += ["", "shipit:", "  variables:", f"    SHIPIT_SPEC: {_yaml_text(str(spec_path))}"]
    return "\n".join(lines)


def next_steps(result: InitResult, check: str) -> str:
    """What `shipit init` tells its user: what it wrote, and how to run it in CI."""
    facts = result.facts
    lines = [
        f"wrote {result.path}: image {facts.name} (context {facts.context}) to"
        f" {facts.registry.shown} ({facts.registry.source})",
        f"`{check}` shows what a run would do.",
    ]
    if facts.registry.provider == "github":
        lines.append("To release from GitHub Actions, save this as .github/workflows/release.yml:")
    elif facts.registry.provider == "gitlab":
        lines.append("To release from GitLab CI, add this to .gitlab-ci.yml:")
    else:
        lines.append("`docker run -d -p 5000:5000 registry:2` starts a registry to push to.")
    if result.snippet:
        lines += ["", result.snippet]
    return "\n".join(lines)


# -- the I/O around them -----------------------------------------------------------------


def find_dockerfile(root: Path) -> Path | None:
    """The shallowest Dockerfile (or Containerfile) under `root`, in name order.

    Bounded: SEARCH_DEPTH folders deep, SEARCH_LIMIT folders in all; hidden folders
    (.git, .devcontainer), node_modules, vendor and virtual environments are skipped.
    """
    todo: deque[tuple[Path, int]] = deque([(root, 0)])
    visited = 0
    while todo and visited < SEARCH_LIMIT:
        folder, depth = todo.popleft()
        visited += 1
        for name in DOCKERFILES:
            if (folder / name).is_file():
                return folder / name
        if depth >= SEARCH_DEPTH:
            continue
        try:
            children = sorted(p for p in folder.iterdir() if _searchable(p))
        except OSError:
            continue
        todo.extend((child, depth + 1) for child in children)
    return None


def _searchable(path: Path) -> bool:
    return (
        not path.name.startswith(".")
        and path.name not in SKIPPED_FOLDERS
        and not path.is_symlink()
        and path.is_dir()
    )


def read_repository(directory: Path) -> tuple[Path | None, str | None]:
    """The repository's top folder and its remote (origin, else the first), if any."""
    found = locate(directory)
    if found is None:
        return None, None
    top, _ = found
    return top, remote_url(directory)


def gather(
    directory: Path, spec_path: Path, env: Mapping[str, str], *, spec_file: str | None = None
) -> Facts:
    """Read the repository in `directory` and decide what the starter spec says."""
    top, remote = read_repository(directory)
    registry = guess_registry(env, remote)
    here = directory.resolve()
    at_top = top is None or top.resolve() == here
    name = image_name(registry.repository if at_top and registry.repository else here.name)
    found = find_dockerfile(directory)
    context, dockerfile = ".", "Dockerfile"
    if found is not None:
        dockerfile = found.name
        relative = os.path.relpath(found.parent.resolve(), spec_path.parent.resolve())
        context = str(PurePosixPath(*Path(relative).parts)) if relative != "." else "."
    working = None
    if top is not None and not at_top:
        working = str(PurePosixPath(*here.relative_to(top.resolve()).parts))
    return Facts(
        registry=registry,
        name=name,
        context=context,
        dockerfile=dockerfile,
        dockerfile_found=found is not None,
        working_directory=working,
        spec_file=spec_file,
    )


def init(
    directory: Path,
    spec_path: Path,
    env: Mapping[str, str],
    *,
    force: bool = False,
    spec_file: str | None = None,
) -> InitResult:
    """Write a starter spec at `spec_path` for the repository in `directory`."""
    if not directory.is_dir():
        raise UsageError(f"-C {directory}: no such folder")
    if spec_path.exists() and not force:
        raise UsageError(f"{spec_path} already exists", hint="`shipit init --force` writes over it")
    facts = gather(directory, spec_path, env, spec_file=spec_file)
    text = spec_text(facts)
    warnings = []
    if facts.dockerfile_found:
        spec_mod.parse(text, spec_path, env)  # a starter that does not validate is a bug
    else:
        warnings.append(
            f"no Dockerfile found under {directory}: the spec expects one at"
            f" {spec_path.parent / 'Dockerfile'}"
        )
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(text, encoding="utf-8")
    return InitResult(
        path=spec_path, facts=facts, snippet=ci_snippet(facts), warnings=tuple(warnings)
    )
