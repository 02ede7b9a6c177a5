"""`shipit init --from`: GitLab pipelines (docker and podman script lines) and a full GitHub
workflow (login, metadata, build-push, trivy, cosign), run in-process; and the tag features
the translation needs (pep440, `latest: true` rules, tz=, SOURCE_DATE_EPOCH)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipit.cli import main
from shipit.pep440 import parse

DOCKER_GITLAB = """\
stages: [test, build, release]
test:
  stage: test
  script:
    - make test
build:
  stage: build
  image: docker:24
  services: [docker:24-dind]
  before_script:
    - docker login -u $CI_REGISTRY_USER -p $CI_REGISTRY_PASSWORD $CI_REGISTRY
  script:
    - docker build --pull -t $CI_REGISTRY_IMAGE:$CI_COMMIT_SHA --build-arg VERSION=$CI_COMMIT_SHORT_SHA .
    - docker push $CI_REGISTRY_IMAGE:$CI_COMMIT_SHA
    - docker tag $CI_REGISTRY_IMAGE:$CI_COMMIT_SHA $CI_REGISTRY_IMAGE:$CI_COMMIT_REF_SLUG
    - docker push $CI_REGISTRY_IMAGE:$CI_COMMIT_REF_SLUG
release:
  stage: release
  image: docker:24
  rules:
    - if: $CI_COMMIT_TAG
  script:
    - docker pull $CI_REGISTRY_IMAGE:$CI_COMMIT_SHA
    - docker tag $CI_REGISTRY_IMAGE:$CI_COMMIT_SHA $CI_REGISTRY_IMAGE:$CI_COMMIT_TAG
    - docker push $CI_REGISTRY_IMAGE:$CI_COMMIT_TAG
latest:
  stage: release
  only: [main]
  script:
    - docker build -t $CI_REGISTRY_IMAGE:latest .
    - docker push $CI_REGISTRY_IMAGE:latest
    - ./notify.sh
"""

PODMAN_GITLAB = """\
build:
  image: quay.io/podman/stable
  script:
    - podman login -u "$QUAY_USER" -p "$QUAY_TOKEN" quay.io
    - podman build -f docker/Containerfile -t quay.io/acme/api:$CI_COMMIT_SHORT_SHA docker
    - podman push quay.io/acme/api:$CI_COMMIT_SHORT_SHA
    - podman push quay.io/acme/api:v1-$CI_COMMIT_SHORT_SHA
"""

GITLAB_ENV = {
    "GITLAB_CI": "true",
    "CI_REGISTRY": "registry.gitlab.com",
    "CI_REGISTRY_IMAGE": "registry.gitlab.com/acme/shop",
    "CI_PROJECT_NAMESPACE": "acme",
    "CI_PROJECT_NAME": "shop",
    "CI_REGISTRY_USER": "gitlab-ci-token",
    "CI_DEFAULT_BRANCH": "main",
    "CI_COMMIT_SHA": "0123456789abcdef0123456789abcdef01234567",
    "CI_PIPELINE_SOURCE": "push",
}


def _init(tmp_path: Path, name: str, text: str, capsys: pytest.CaptureFixture[str]) -> str:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    (tmp_path / "docker").mkdir(exist_ok=True)
    (tmp_path / "docker" / "Containerfile").write_text("FROM scratch\n", encoding="utf-8")
    (tmp_path / ".trivyignore").write_text("", encoding="utf-8")
    source = tmp_path / name
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(text, encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    code = main(["init", "--from", str(source), "-C", str(tmp_path)], env=env)
    _, err = capsys.readouterr()
    assert code == 0, err
    assert source.read_text(encoding="utf-8") == text, "the original is left untouched"
    return err


def _refs(tmp_path: Path, env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> set[str]:
    full = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env}
    code = main(["tags", "--json", "-C", str(tmp_path)], env=full)
    out, err = capsys.readouterr()
    assert code == 0, err
    return {ref for image in json.loads(out)["images"] for ref in image["refs"]}


def test_gitlab_docker_tutorial(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = _init(tmp_path, ".gitlab-ci.yml", DOCKER_GITLAB, capsys)
    assert "./notify.sh" in report  # not translated, with its job
    sha = GITLAB_ENV["CI_COMMIT_SHA"]
    image = "registry.gitlab.com/acme/shop"
    on_main = {**GITLAB_ENV, "CI_COMMIT_BRANCH": "main", "CI_COMMIT_REF_NAME": "main"}
    assert _refs(tmp_path, on_main, capsys) == {
        f"{image}:{sha}",
        f"{image}:main",
        f"{image}:latest",
    }
    feature = {**GITLAB_ENV, "CI_COMMIT_BRANCH": "Feature/X", "CI_COMMIT_REF_NAME": "Feature/X"}
    assert _refs(tmp_path, feature, capsys) == {f"{image}:{sha}", f"{image}:feature-x"}
    tag = {**GITLAB_ENV, "CI_COMMIT_TAG": "v1.2.0", "CI_COMMIT_REF_NAME": "v1.2.0"}
    assert _refs(tmp_path, tag, capsys) == {f"{image}:{sha}", f"{image}:v1-2-0", f"{image}:v1.2.0"}
    spec = yaml.safe_load((tmp_path / "shipit.yml").read_text(encoding="utf-8"))
    assert spec["registries"][0]["password_env"] == "CI_REGISTRY_PASSWORD"
    assert spec["image"]["build_args"] == {"VERSION": "{{ sha[:8] }}"}
    rewritten = yaml.safe_load((tmp_path / ".gitlab-ci.shipit.yml").read_text(encoding="utf-8"))
    assert {"build", "release", "latest"}.isdisjoint(rewritten)
    assert "test" in rewritten
    assert rewritten["include"][-1]["remote"].endswith(".gitlab-ci-template.yml")


def test_gitlab_podman(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _init(tmp_path, ".gitlab-ci.yml", PODMAN_GITLAB, capsys)
    spec = yaml.safe_load((tmp_path / "shipit.yml").read_text(encoding="utf-8"))
    assert spec["registries"] == [
        {"url": "quay.io/acme", "username": "${QUAY_USER}", "password_env": "QUAY_TOKEN"}
    ]
    assert spec["image"]["context"] == "docker"
    assert spec["image"]["dockerfile"] == "Containerfile"
    env = {**GITLAB_ENV, "CI_COMMIT_BRANCH": "main", "QUAY_USER": "u"}
    short = GITLAB_ENV["CI_COMMIT_SHA"][:8]
    assert _refs(tmp_path, env, capsys) == {
        f"quay.io/acme/api:{short}",
        f"quay.io/acme/api:v1-{short}",
    }


GITHUB = """\
name: docker
on:
  push:
    branches: [main]
    tags: ["v*"]
  pull_request:
env:
  DOCKER_METADATA_PR_HEAD_SHA: true
jobs:
  docker:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: docker/setup-buildx-action@v3
      - uses: docker/login-action@v3
        with:
          registry: ghcr.io
          username: ${{ github.actor }}
          password: ${{ secrets.GITHUB_TOKEN }}
      - uses: docker/login-action@v3
        with:
          username: ${{ vars.DOCKERHUB_USER }}
          password: ${{ secrets.DOCKERHUB_TOKEN }}
      - id: meta
        uses: docker/metadata-action@v5
        with:
          images: |
            acme/app
            ghcr.io/acme/app
          tags: |
            type=semver,pattern={{version}}
            type=semver,pattern={{major}}.{{minor}}
            type=ref,event=branch
            type=sha
            type=raw,value=nightly-{{date 'YYYYMMDD'}},enable={{is_default_branch}}
            type=raw,value={{weird}}
          labels: |
            org.opencontainers.image.vendor=Acme
      - uses: docker/build-push-action@v6
        with:
          context: .
          platforms: linux/amd64,linux/arm64
          build-args: |
            MODE=release
          push: ${{ github.event_name != 'pull_request' }}
          tags: ${{ steps.meta.outputs.tags }}
          labels: ${{ steps.meta.outputs.labels }}
      - uses: aquasecurity/trivy-action@0.28.0
        with:
          image-ref: ghcr.io/acme/app:${{ github.sha }}
          severity: CRITICAL,HIGH
          exit-code: "1"
          ignore-unfixed: true
          trivyignores: .trivyignore
      - uses: sigstore/cosign-installer@v3
      - run: cosign sign --yes --key env://COSIGN_PRIVATE_KEY ghcr.io/acme/app@${{ steps.build.outputs.digest }}
        env:
          COSIGN_PRIVATE_KEY: ${{ secrets.COSIGN_PRIVATE_KEY }}
          COSIGN_PASSWORD: ${{ secrets.COSIGN_PASSWORD }}
"""


def test_github_workflow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = _init(tmp_path, ".github/workflows/docker.yml", GITHUB, capsys)
    assert "{{weird}}" in report and "Not translated" in report
    text = (tmp_path / "shipit.yml").read_text(encoding="utf-8")
    assert "secrets" not in text
    spec: dict[str, Any] = yaml.safe_load(text)
    assert spec["registries"] == [
        {
            "url": "docker.io/acme",
            "username": "${DOCKERHUB_USER}",
            "password_env": "DOCKERHUB_TOKEN",
        },
        {"url": "ghcr.io/acme", "username": "${GITHUB_ACTOR}", "password_env": "GITHUB_TOKEN"},
    ]
    assert spec["scan"] == {"fail_on": "HIGH", "ignore_unfixed": True, "ignorefile": ".trivyignore"}
    assert spec["sign"] == {"key": "env://COSIGN_PRIVATE_KEY"}
    assert spec["image"]["platforms"] == ["linux/amd64", "linux/arm64"]
    assert spec["image"]["labels"] == {"org.opencontainers.image.vendor": "Acme"}
    workflow = yaml.safe_load(
        (tmp_path / ".github/workflows/docker.shipit.yml").read_text(encoding="utf-8")
    )
    steps = workflow["jobs"]["docker"]["steps"]
    uses = [s.get("uses", "") for s in steps]
    assert not any("docker/" in u or "trivy-action" in u for u in uses)
    shipit = steps[-1]
    assert shipit["with"]["push"] == "${{ github.event_name != 'pull_request' }}"
    assert shipit["env"]["DOCKERHUB_TOKEN"] == "${{ secrets.DOCKERHUB_TOKEN }}"
    assert shipit["env"]["COSIGN_PASSWORD"] == "${{ secrets.COSIGN_PASSWORD }}"
    env = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_EVENT_NAME": "push",
        "GITHUB_REF": "refs/tags/v1.4.2",
        "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567",
        "SOURCE_DATE_EPOCH": "1578616200",
        "DOCKERHUB_USER": "u",
        "GITHUB_ACTOR": "a",
    }
    tags = {ref.partition(":")[2] for ref in _refs(tmp_path, env, capsys)}
    assert tags == {"1.4.2", "1.4", "sha-0123456", "latest"}


def test_a_literal_password_is_never_copied(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = GITHUB.replace("${{ secrets.DOCKERHUB_TOKEN }}", "hunter2")
    report = _init(tmp_path, ".github/workflows/docker.yml", text, capsys)
    assert "hunter2" not in (tmp_path / "shipit.yml").read_text(encoding="utf-8")
    assert "hunter2" not in (tmp_path / ".github/workflows/docker.shipit.yml").read_text(
        encoding="utf-8"
    )
    assert "never a written value" in report


def test_nothing_to_translate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / ".gitlab-ci.yml"
    source.write_text("test:\n  script: [make test]\n", encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    assert main(["init", "--from", str(source), "-C", str(tmp_path)], env=env) == 2
    assert "no image" in capsys.readouterr().err
    assert not (tmp_path / "shipit.yml").exists()


@pytest.mark.parametrize(
    ("text", "normalized", "final"),
    [
        ("1.2", "1.2", True),
        ("v1.1.1", "1.1.1", True),
        ("1.1beta2", "1.1b2", False),
        ("1.0dev4", "1.0.dev4", False),
        ("1.2post1", "1.2.post1", False),
        ("v1.2.3rc2", "1.2.3rc2", False),
        ("1!2.0-r3", "1!2.0.post3", False),
    ],
)
def test_pep440(text: str, normalized: str, final: bool) -> None:
    version = parse(text)
    assert version is not None
    assert (str(version), version.is_final) == (normalized, final)


def test_pep440_refuses_what_it_is_not() -> None:
    assert parse("sometag") is None
    assert parse("release1") is None


def _spec_tags(
    tmp_path: Path,
    spec: str,
    args: list[str],
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str] | None = None,
) -> list[str]:
    from tests.support.gitrepo import make_repo

    make_repo(tmp_path, [{}], branch="main")
    (tmp_path / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    (tmp_path / "shipit.yml").write_text(textwrap.dedent(spec), encoding="utf-8")
    full = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **(env or {})}
    code = main(["tags", "--json", "-C", str(tmp_path), *args], env=full)
    out, err = capsys.readouterr()
    assert code == 0, err
    [image] = json.loads(out)["images"]
    return list(image["tags"])


SPEC = """\
version: 1
registries: [r.example/o]
image:
  name: app
  flavor: {latest: false}
  tags:
    - {type: match, pattern: '\\d+', latest: true}
    - {type: pep440, pattern: '{{major}}.{{minor}}', latest: true}
    - {type: raw, value: "d{{ now('%H', tz='Asia/Tokyo') }}-{{ date('%H') }}"}
"""


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("refs/tags/1.2", {"1", "1.2", "latest", "d09-00"}),
        ("refs/tags/1.2rc1", {"1", "1.2rc1", "latest", "d09-00"}),  # match brings latest
        ("refs/heads/main", {"d09-00"}),
    ],
)
def test_latest_rules_pep440_and_the_clock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ref: str, expected: set[str]
) -> None:
    env = {"SOURCE_DATE_EPOCH": "1578616200"}  # 2020-01-10T00:30:00Z
    assert set(_spec_tags(tmp_path, SPEC, ["--ref", ref], capsys, env)) == expected


def test_a_pep440_prerelease_brings_no_latest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = SPEC.replace("pattern: '\\d+', latest: true", "pattern: 'x', latest: true")
    tags = _spec_tags(
        tmp_path, spec, ["--ref", "refs/tags/1.2rc1"], capsys, {"SOURCE_DATE_EPOCH": "0"}
    )
    assert set(tags) == {"1.2rc1", "d09-00"}


def test_source_date_epoch_must_be_seconds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.gitrepo import make_repo

    make_repo(tmp_path, [{}])
    (tmp_path / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    (tmp_path / "shipit.yml").write_text(SPEC, encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SOURCE_DATE_EPOCH": "yesterday"}
    assert main(["tags", "-C", str(tmp_path)], env=env) == 2
    assert "SOURCE_DATE_EPOCH" in capsys.readouterr().err
