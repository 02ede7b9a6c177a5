"""The plan: stages, refs, labels, monorepo skipping, and its JSON (a golden file)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shipit.context import GitFacts, GitTag, History, Overrides, resolve
from shipit.errors import UsageError
from shipit.plan import make_plan
from shipit.spec import parse

GOLDEN = Path(__file__).parent.parent / "data" / "plan_golden.json"
SHA = "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"
BASE = "0f" * 20

SPEC = """\
version: 1
registries:
  - ghcr.io/Acme
  - url: localhost:5000
    insecure: true
scan: {fail_on: CRITICAL}
sign: {key: env://COSIGN_KEY, annotations: {team: "{{ env.TEAM }}"}}
images:
  - name: backend
    context: backend
    target: runtime
    platform: linux/amd64
    build_args: {APP_VERSION: "{{ version }}", COMMIT: "{{ sha_short }}"}
    labels: {org.example.team: payments, org.opencontainers.image.title: Backend API}
    release: {tag_pattern: "backend/v(?P<version>.*)"}
  - name: frontend
    release: {tag_pattern: "frontend/v(?P<version>.*)"}
    tags: [{type: semver, pattern: "{{major}}.{{minor}}"}, {type: sha}]
    scan: false
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for sub in ("backend", "."):
        (tmp_path / sub).mkdir(exist_ok=True)
        (tmp_path / sub / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    return tmp_path


def context(overrides: Overrides) -> object:
    facts = GitFacts(
        head=SHA,
        branch="main",
        commit_time=datetime(2024, 2, 29, 13, 14, 15, tzinfo=UTC),
        tags=(GitTag(name="backend/v1.4.3", sha=BASE), GitTag(name="frontend/v0.9.0", sha=BASE)),
        history=History(head=SHA, parents={BASE: (), SHA: (BASE,)}),
        origin_url="https://github.com/acme/shop.git",
    )
    return resolve(facts, {"TEAM": "payments"}, overrides, now=datetime(2024, 3, 1, tzinfo=UTC))


def plan_json(
    project: Path, overrides: Overrides | None = None, **kwargs: object
) -> dict[str, object]:
    spec = parse(SPEC, project / "shipit.yml", {})
    plan = make_plan(spec, context(overrides or Overrides()), **kwargs)  # type: ignore[arg-type]
    text = json.dumps(plan.to_json(), indent=2).replace(str(project), "<project>")
    return json.loads(text)  # type: ignore[no-any-return]


def test_plan_json_matches_the_golden_file(project: Path) -> None:
    document = plan_json(project, Overrides(ref="refs/tags/backend/v1.5.0"))
    if os.environ.get("SHIPIT_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    assert document == json.loads(GOLDEN.read_text(encoding="utf-8"))


def test_a_release_of_one_image_skips_the_others(project: Path) -> None:
    document = plan_json(project, Overrides(ref="refs/tags/backend/v1.5.0"))
    backend, frontend = document["images"]  # type: ignore[misc]
    assert backend["skipped"] is None and backend["version"] == "1.5.0"
    assert frontend["skipped"] == "tag backend/v1.5.0 releases backend, not frontend"
    assert document["warnings"] == [
        "image frontend is skipped: tag backend/v1.5.0 releases backend, not frontend"
    ]


def test_a_branch_build_builds_every_image(project: Path) -> None:
    document = plan_json(project)
    backend, frontend = document["images"]  # type: ignore[misc]
    assert backend["version"] == "1.4.4-dev.1+g1a2b3c4"
    assert frontend["version"] == "0.9.1-dev.1+g1a2b3c4"
    assert backend["refs"] == [
        "ghcr.io/acme/backend:main",
        "ghcr.io/acme/backend:sha-1a2b3c4",
        "localhost:5000/backend:main",
        "localhost:5000/backend:sha-1a2b3c4",
    ]
    assert frontend["tags"] == ["sha-1a2b3c4"]
    assert backend["stages"] == ["build", "scan", "push", "sign"]
    assert frontend["stages"] == ["build", "push", "sign"]


def test_labels_and_build_args_are_rendered(project: Path) -> None:
    backend = plan_json(project)["images"][0]  # type: ignore[index]
    build = backend["build"]
    assert build["build_args"] == {"APP_VERSION": "1.4.4-dev.1+g1a2b3c4", "COMMIT": "1a2b3c4"}
    labels = build["labels"]
    assert labels["org.opencontainers.image.revision"] == SHA
    assert labels["org.opencontainers.image.created"] == "2024-02-29T13:14:15Z"
    assert labels["org.opencontainers.image.source"] == "https://github.com/acme/shop"
    assert labels["org.opencontainers.image.title"] == "Backend API"  # the spec's own label wins
    assert labels["org.example.team"] == "payments"
    assert backend["annotations"]["team"] == "payments"


def test_skip_and_no_push_shape_the_stages(project: Path) -> None:
    backend = plan_json(project, skip=("scan", "sign"))["images"][0]  # type: ignore[index]
    assert backend["stages"] == ["build", "push"]
    backend = plan_json(project, push=False)["images"][0]  # type: ignore[index]
    assert backend["stages"] == ["build", "scan"]
    with pytest.raises(UsageError, match="--skip takes build, scan, push, sign; not lint"):
        plan_json(project, skip=("lint",))
    with pytest.raises(UsageError, match="cannot be skipped"):
        plan_json(project, skip=("build",))


def test_only_one_image(project: Path) -> None:
    document = plan_json(project, only="Frontend")
    assert [i["name"] for i in document["images"]] == ["frontend"]  # type: ignore[index]
    with pytest.raises(UsageError, match="no image named 'web'"):
        plan_json(project, only="web")
