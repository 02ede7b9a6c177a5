"""Tag rules, flavor, sanitizing, slugs and floating tags (pure, no git)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipit.context import Context, GitTag, History
from shipit.errors import SpecError
from shipit.spec import Image, parse
from shipit.tags import derive_tags, sanitize, slug
from shipit.version import derive

SHA = "0123456789abcdef0123456789abcdef01234567"
PR_HEAD = "fedcba9876543210fedcba9876543210fedcba98"


def image(tmp_path: Path, **fields: Any) -> Image:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    doc = {"version": 1, "registries": ["r.example/o"], "image": {"name": "app", **fields}}
    return parse(yaml.safe_dump(doc), tmp_path / "shipit.yml", {}).images[0]


def context(
    *,
    event: str = "push",
    branch: str | None = "main",
    tag: str | None = None,
    pr: int | None = None,
    tags: tuple[str, ...] = (),
    sha: str = SHA,
    default_branch: str = "main",
    env: dict[str, str] | None = None,
) -> Context:
    history = History(head=SHA, parents={SHA: ()})
    return Context(
        provider="local",
        event=event,
        ref=None,
        branch=branch,
        tag=tag,
        pr=pr,
        sha=sha,
        head_sha=SHA,
        commit_time=datetime(2020, 1, 10, 0, 30, tzinfo=UTC),
        default_branch=default_branch,
        build_number="17",
        tags=tuple(GitTag(name=t, sha="9" * 40) for t in tags),
        history=history,
        env=env or {},
        now=datetime(2030, 5, 6, tzinfo=UTC),
    )


def release(name: str, *others: str) -> Context:
    return context(event="tag", branch=None, tag=name, tags=(name, *others))


def tags_of(img: Image, ctx: Context) -> list[str]:
    return list(derive_tags(img, ctx, derive(ctx, img.release_regex())))


# -- sanitizing and slugs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("feature/login", "feature-login"),
        ("Feature/JIRA-12_fix.v2", "Feature-JIRA-12_fix.v2"),
        ("-hotfix-", "hotfix"),
        ("..hidden", "hidden"),
        ("a//b??c", "a-b-c"),
        ("naïve-ünïcode", "na-ve-n-code"),
        ("x" * 200, "x" * 128),
        ("a" * 127 + "/b", "a" * 127),
        ("1.4.4-dev.7+g1a2b3c4", "1.4.4-dev.7-g1a2b3c4"),
        ("$(rm -rf /);`x`\nnext", "rm-rf-x-next"),
        ("///", ""),
    ],
)
def test_sanitize(raw: str, clean: str) -> None:
    assert sanitize(raw) == clean


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        # examples that follow GitLab's documented CI_COMMIT_REF_SLUG rule
        ("main", "main"),
        ("Feature/JIRA-12_fix.v2", "feature-jira-12-fix-v2"),
        ("-leading--and-trailing-", "leading--and-trailing"),
        ("v1.2.3", "v1-2-3"),
        ("ÄÖÜ/ß", ""),
        ("a" * 70, "a" * 63),
        ("a" * 62 + "/b", "a" * 62),
    ],
)
def test_branch_slug_is_gitlabs_rule(ref: str, expected: str) -> None:
    assert slug(ref) == expected


# -- each rule type ------------------------------------------------------------------------


def test_default_rules_on_a_branch(tmp_path: Path) -> None:
    assert tags_of(image(tmp_path), context(branch="feature/x")) == ["feature-x", "sha-0123456"]


def test_default_rules_on_a_release(tmp_path: Path) -> None:
    assert tags_of(image(tmp_path), release("v1.2.3")) == [
        "1.2.3",
        "1.2",
        "1",
        "v1.2.3",
        "sha-0123456",
        "latest",
    ]


def test_default_rules_on_a_pull_request_use_the_head_sha(tmp_path: Path) -> None:
    ctx = context(event="pull_request", branch="feature/x", pr=15, sha=PR_HEAD)
    assert tags_of(image(tmp_path), ctx) == ["pr-15", "sha-fedcba9"]


def test_semver_patterns_and_raw(tmp_path: Path) -> None:
    img = image(
        tmp_path,
        tags=[
            {"type": "semver", "pattern": "{{major}}.{{minor}}.{{patch}}"},
            {"type": "semver", "pattern": "v{{major}}"},
            {"type": "semver", "pattern": "{{raw}}"},
        ],
    )
    assert tags_of(img, release("v3.4.5")) == ["3.4.5", "v3", "v3.4.5", "latest"]


def test_semver_on_a_branch_makes_nothing_unless_given_a_value(tmp_path: Path) -> None:
    rules = [{"type": "semver", "pattern": "{{major}}.{{minor}}"}]
    assert tags_of(image(tmp_path, tags=rules), context()) == []
    valued = [{"type": "semver", "pattern": "{{major}}.{{minor}}", "value": "v7.8.9"}]
    assert tags_of(image(tmp_path, tags=valued), context()) == ["7.8"]


def test_semver_value_that_is_not_a_version_is_an_error_naming_the_rule(tmp_path: Path) -> None:
    img = image(tmp_path, tags=[{"type": "semver", "value": "{{ branch }}"}])
    with pytest.raises(
        SpecError,
        match=r"shipit.yml:\d+:\d+: tag rule 'semver': value 'main' is not a semantic version",
    ):
        tags_of(img, context())


def test_prerelease_gets_only_its_full_version(tmp_path: Path) -> None:
    img = image(
        tmp_path,
        tags=[
            {"type": "semver", "pattern": "{{major}}.{{minor}}.{{patch}}"},
            {"type": "semver", "pattern": "{{major}}"},
            {"type": "semver", "pattern": "v{{version}}"},
        ],
    )
    assert tags_of(img, release("v2.0.0-rc.1")) == ["2.0.0-rc.1", "v2.0.0-rc.1"]


def test_ref_rules(tmp_path: Path) -> None:
    rules = [
        {"type": "ref", "event": "branch"},
        {"type": "ref", "event": "tag"},
        {"type": "ref", "event": "pr"},
    ]
    img = image(tmp_path, tags=rules)
    assert tags_of(img, context(branch="dev")) == ["dev"]
    assert tags_of(img, release("sometag")) == ["sometag"]
    assert tags_of(img, context(event="pull_request", pr=3)) == ["pr-3"]
    custom = image(tmp_path, tags=[{"type": "ref", "event": "pr", "prefix": "mr-"}])
    assert tags_of(custom, context(event="pull_request", pr=3)) == ["mr-3"]


def test_sha_rule_options(tmp_path: Path) -> None:
    rules = [
        {"type": "sha"},
        {"type": "sha", "length": 12, "prefix": ""},
        {"type": "sha", "format": "long", "prefix": "git-"},
    ]
    assert tags_of(image(tmp_path, tags=rules), context()) == [
        "sha-0123456",
        "0123456789ab",
        f"git-{SHA}",
    ]


def test_schedule_rule(tmp_path: Path) -> None:
    rules = [{"type": "schedule"}, {"type": "schedule", "pattern": "nightly-{{ date('%Y%m%d') }}"}]
    img = image(tmp_path, tags=rules)
    assert tags_of(img, context(event="schedule")) == ["nightly", "nightly-20200110"]
    assert tags_of(img, context()) == []


def test_edge_rule(tmp_path: Path) -> None:
    img = image(
        tmp_path, tags=[{"type": "edge"}, {"type": "edge", "branch": "develop", "suffix": "-dev"}]
    )
    assert tags_of(img, context(branch="main")) == ["edge"]
    assert tags_of(img, context(branch="develop")) == ["edge-dev"]
    assert tags_of(img, context(branch="other")) == []


def test_match_rule(tmp_path: Path) -> None:
    rules = [
        {"type": "match", "pattern": r"v(\d+\.\d+)", "group": 1},
        {"type": "match", "pattern": r"(?P<stage>alpha|beta)", "group": "stage"},
        {"type": "match", "pattern": r"\d+", "value": "{{ build_number }}"},
    ]
    img = image(tmp_path, tags=rules)
    assert tags_of(img, release("v1.2-beta")) == ["1.2", "beta", "17"]
    assert tags_of(img, context()) == ["17"]


def test_raw_rule_templates(tmp_path: Path) -> None:
    rules = [
        {"type": "raw", "value": "{{ branch_slug }}-{{ date('%Y%m%d') }}"},
        {"type": "raw", "value": "build-{{ build_number }}"},
        {"type": "raw", "value": "{{ env.STAGE }}-{{ now('%Y') }}"},
        {"type": "raw", "value": "{{ image }}-{{ sha_short }}"},
    ]
    ctx = context(branch="Feature/X", env={"STAGE": "qa"})
    assert tags_of(image(tmp_path, tags=rules), ctx) == [
        "feature-x-20200110",
        "build-17",
        "qa-2030",
        "app-0123456",
    ]


def test_enable_must_render_true_or_false(tmp_path: Path) -> None:
    img = image(tmp_path, tags=[{"type": "raw", "value": "x", "enable": "{{ branch }}"}])
    with pytest.raises(
        SpecError,
        match="enable '\\{\\{ branch \\}\\}': must render to true or false, rendered 'main'",
    ):
        tags_of(img, context())


def test_enable_with_an_expression(tmp_path: Path) -> None:
    rules = [
        {
            "type": "raw",
            "value": "x",
            "enable": "{{ event == 'push' and branch.startswith('rel') }}",
        }
    ]
    img = image(tmp_path, tags=rules)
    assert tags_of(img, context(branch="release-1")) == ["x"]
    assert tags_of(img, context(branch="main")) == []


def test_an_empty_tag_is_an_error_naming_its_rule(tmp_path: Path) -> None:
    img = image(tmp_path, tags=[{"type": "raw", "value": "{{ pr }}"}])
    with pytest.raises(
        SpecError, match=r"shipit.yml:\d+:\d+: tag rule 'raw': made an empty or invalid tag from ''"
    ):
        tags_of(img, context())


def test_undefined_template_values_are_errors_not_empty_strings(tmp_path: Path) -> None:
    img = image(tmp_path, tags=[{"type": "raw", "value": "{{ env.MISSING }}"}])
    with pytest.raises(SpecError, match="has no attribute 'MISSING'"):
        tags_of(img, context())


def test_templates_cannot_reach_python_internals(tmp_path: Path) -> None:
    img = image(tmp_path, tags=[{"type": "raw", "value": "{{ image.__class__.__mro__ }}"}])
    with pytest.raises(SpecError):
        tags_of(img, context())


def test_priority_orders_and_duplicates_are_dropped(tmp_path: Path) -> None:
    rules = [
        {"type": "sha"},
        {"type": "raw", "value": "low", "priority": 1},
        {"type": "raw", "value": "main"},
        {"type": "ref", "event": "branch"},
        {"type": "raw", "value": "top", "priority": 5000},
    ]
    assert tags_of(image(tmp_path, tags=rules), context()) == ["top", "main", "sha-0123456", "low"]


# -- flavor ----------------------------------------------------------------------------------


def test_flavor_prefix_and_suffix_apply_unless_a_rule_has_its_own(tmp_path: Path) -> None:
    rules = [
        {"type": "ref", "event": "branch"},
        {"type": "sha"},
        {"type": "raw", "value": "x", "prefix": ""},
    ]
    img = image(tmp_path, tags=rules, flavor={"prefix": "{{ env.P }}-", "suffix": "-slim"})
    assert tags_of(img, context(env={"P": "web"})) == [
        "web-main-slim",
        "x-slim",
        "sha-0123456-slim",
    ]


def test_latest_modes(tmp_path: Path) -> None:
    rules = [{"type": "ref", "event": "branch"}]
    assert tags_of(image(tmp_path, tags=rules, flavor={"latest": "true"}), context()) == [
        "main",
        "latest",
    ]
    assert tags_of(image(tmp_path, tags=rules, flavor={"latest": "false"}), release("v1.0.0")) == []
    assert tags_of(image(tmp_path, tags=rules), release("v1.0.0")) == ["latest"]
    assert tags_of(image(tmp_path, tags=rules), release("v1.0.0-rc.1")) == []
    assert tags_of(image(tmp_path, tags=rules), release("release1")) == []


def test_latest_with_prefix_and_suffix_only_when_asked(tmp_path: Path) -> None:
    rules = [{"type": "semver"}]
    plain = image(tmp_path, tags=rules, flavor={"prefix": "p-", "suffix": "-s"})
    assert tags_of(plain, release("v1.0.0")) == ["p-1.0.0-s", "latest"]
    both = image(
        tmp_path,
        tags=rules,
        flavor={"prefix": "p-", "suffix": "-s", "prefix_on_latest": True, "suffix_on_latest": True},
    )
    assert tags_of(both, release("v1.0.0")) == ["p-1.0.0-s", "p-latest-s"]


# -- floating tags never go backwards --------------------------------------------------------


def test_backport_moves_minor_and_major_but_not_latest(tmp_path: Path) -> None:
    img = image(tmp_path)
    assert tags_of(img, release("v1.4.3", "v1.4.2", "v2.0.0")) == [
        "1.4.3",
        "1.4",
        "1",
        "v1.4.3",
        "sha-0123456",
    ]


def test_backport_under_a_newer_minor_moves_only_its_minor(tmp_path: Path) -> None:
    img = image(tmp_path)
    assert tags_of(img, release("v1.4.3", "v1.5.0")) == ["1.4.3", "1.4", "v1.4.3", "sha-0123456"]


def test_prereleases_and_other_tags_do_not_hold_floating_tags_back(tmp_path: Path) -> None:
    img = image(tmp_path)
    tags = tags_of(img, release("v1.4.3", "v2.0.0-rc.1", "v1.4.3-rc.2", "sometag", "v9"))
    assert tags == ["1.4.3", "1.4", "1", "v1.4.3", "sha-0123456", "latest"]


def test_rebuilding_the_highest_release_keeps_everything(tmp_path: Path) -> None:
    assert "latest" in tags_of(image(tmp_path), release("v2.0.0", "v1.9.9", "v2.0.0"))


def test_floating_always_turns_the_check_off(tmp_path: Path) -> None:
    img = image(tmp_path, flavor={"floating": "always"})
    assert tags_of(img, release("v1.4.3", "v2.0.0"))[-1] == "latest"
    assert "1" in tags_of(img, release("v1.4.3", "v2.0.0"))


def test_monorepo_floating_tags_only_compare_their_own_releases(tmp_path: Path) -> None:
    img = image(tmp_path, release={"tag_pattern": "backend/v(?P<version>.*)"})
    tags = tags_of(img, release("backend/v1.0.0", "frontend/v9.0.0"))
    assert tags == ["1.0.0", "1.0", "1", "backend-v1.0.0", "sha-0123456", "latest"]


def test_dev_version_as_a_raw_tag(tmp_path: Path) -> None:
    img = image(tmp_path, tags=[{"type": "raw", "value": "{{ version }}"}])
    ctx = replace(context(), tags=(GitTag(name="v1.4.3", sha=SHA),))
    assert tags_of(img, ctx) == ["1.4.4-dev.0-g0123456"]
