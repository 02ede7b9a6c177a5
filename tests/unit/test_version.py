"""Versions: releases from tags (default and custom patterns), dev versions from history."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from shipit.context import Context, GitTag, History
from shipit.spec import DEFAULT_RELEASE_PATTERN
from shipit.version import derive, parse_release

DEFAULT = re.compile(DEFAULT_RELEASE_PATTERN)
MONO = re.compile(r"backend/v(?P<version>.*)")


def linear(count: int) -> tuple[list[str], History]:
    """A straight history of `count` commits, oldest first."""
    shas = [f"{i:040x}" for i in range(1, count + 1)]
    parents = {sha: ((shas[i - 1],) if i else ()) for i, sha in enumerate(shas)}
    return shas, History(head=shas[-1], parents=parents)


def ctx(
    history: History,
    tags: list[GitTag],
    *,
    event: str = "push",
    tag: str | None = None,
    sha: str | None = None,
) -> Context:
    head = history.head or "f" * 40
    return Context(
        provider="local",
        event=event,
        ref=f"refs/tags/{tag}" if tag else "refs/heads/main",
        branch=None if tag else "main",
        tag=tag,
        pr=None,
        sha=sha or head,
        head_sha=head,
        commit_time=datetime(2024, 1, 1, tzinfo=UTC),
        default_branch="main",
        tags=tuple(tags),
        history=history,
    )


@pytest.mark.parametrize(
    ("tag", "pattern", "expected"),
    [
        ("v1.2.3", DEFAULT, "1.2.3"),
        ("1.2.3", DEFAULT, "1.2.3"),
        ("v2.0.8-beta.67", DEFAULT, "2.0.8-beta.67"),
        ("v1.2", DEFAULT, None),
        ("sometag", DEFAULT, None),
        ("release1", DEFAULT, None),
        ("v1.2.3.4", DEFAULT, None),
        ("backend/v1.4.0", MONO, "1.4.0"),
        ("frontend/v1.4.0", MONO, None),
        ("backend/vnext", MONO, None),
    ],
)
def test_release_tags(tag: str, pattern: re.Pattern[str], expected: str | None) -> None:
    parsed = parse_release(tag, pattern)
    assert (str(parsed) if parsed else None) == expected


def test_patterns_without_a_named_group() -> None:
    assert str(parse_release("rel-1.2.3", re.compile(r"rel-(.*)"))) == "1.2.3"
    assert str(parse_release("v3.0.0", re.compile(r"v\d+\.\d+\.\d+"))) == "3.0.0"


def test_a_release_build_has_the_tags_version() -> None:
    shas, history = linear(3)
    version = derive(
        ctx(history, [GitTag(name="v1.4.3", sha=shas[-1])], event="tag", tag="v1.4.3"), DEFAULT
    )
    assert (version.text, version.is_release, version.raw) == ("1.4.3", True, "v1.4.3")
    assert (version.major, version.minor, version.patch, version.prerelease) == (1, 4, 3, None)


def test_a_prerelease_build() -> None:
    _, history = linear(1)
    version = derive(ctx(history, [], event="tag", tag="v2.0.0-rc.1"), DEFAULT)
    assert version.is_release and version.is_prerelease and version.prerelease == "rc.1"


def test_a_tag_that_is_not_a_release_gets_a_dev_version() -> None:
    shas, history = linear(2)
    version = derive(
        ctx(history, [GitTag(name="v1.0.0", sha=shas[0])], event="tag", tag="sometag"), DEFAULT
    )
    assert not version.is_release
    assert version.text == f"1.0.1-dev.1+g{shas[-1][:7]}"


def test_dev_version_counts_commits_since_the_nearest_release() -> None:
    shas, history = linear(8)
    version = derive(ctx(history, [GitTag(name="v1.4.3", sha=shas[0])]), DEFAULT)
    assert version.text == f"1.4.4-dev.7+g{shas[-1][:7]}"
    assert version.tag_safe == f"1.4.4-dev.7-g{shas[-1][:7]}"
    assert (version.base, version.distance) == ("1.4.3", 7)


def test_dev_version_without_any_release() -> None:
    shas, history = linear(5)
    version = derive(ctx(history, []), DEFAULT)
    assert version.text == f"0.0.0-dev.5+g{shas[-1][:7]}"
    assert version.base is None


def test_dev_version_takes_the_highest_reachable_release_not_unreachable_ones() -> None:
    shas, history = linear(4)
    tags = [
        GitTag(name="v1.0.0", sha=shas[0]),
        GitTag(name="v1.2.0", sha=shas[1]),
        GitTag(name="v9.0.0", sha="9" * 40),  # on another branch
        GitTag(name="nightly", sha=shas[2]),
    ]
    version = derive(ctx(history, tags), DEFAULT)
    assert version.text.startswith("1.2.1-dev.2+g")


def test_dev_version_after_a_prerelease_extends_it() -> None:
    shas, history = linear(4)
    tags = [GitTag(name="v1.9.0", sha=shas[0]), GitTag(name="v2.0.0-rc.1", sha=shas[1])]
    version = derive(ctx(history, tags), DEFAULT)
    assert version.text == f"2.0.0-rc.1.dev.2+g{shas[-1][:7]}"
    assert version.core.compare("2.0.0-rc.1") > 0 and version.core.compare("2.0.0") < 0


def test_dev_version_of_a_merge_counts_both_sides() -> None:
    # root - a - b (tag v1.0.0) - merge ; root - c - merge
    root, a, b, c, merge = (f"{i:040x}" for i in range(1, 6))
    history = History(
        head=merge,
        parents={root: (), a: (root,), b: (a,), c: (root,), merge: (b, c)},
    )
    version = derive(ctx(history, [GitTag(name="v1.0.0", sha=b)]), DEFAULT)
    assert version.distance == 2  # c and the merge commit, as `git describe` counts


def test_monorepo_versions_follow_their_own_tags() -> None:
    shas, history = linear(3)
    tags = [GitTag(name="backend/v2.1.0", sha=shas[0]), GitTag(name="frontend/v5.0.0", sha=shas[1])]
    assert derive(ctx(history, tags), MONO).text.startswith("2.1.1-dev.2+g")
    assert derive(ctx(history, tags), re.compile(r"frontend/v(?P<version>.*)")).text.startswith(
        "5.0.1-dev.1+g"
    )


def test_pull_requests_name_the_head_commit_in_the_version() -> None:
    shas, history = linear(2)
    version = derive(ctx(history, [GitTag(name="v1.0.0", sha=shas[0])], sha="b" * 40), DEFAULT)
    assert version.build == "gbbbbbbb"
