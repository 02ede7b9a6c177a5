"""The semantic version of a build, from release tags (DESIGN section 3).

A build of a release tag has that tag's version. Any other build gets the next patch
after the highest release reachable from HEAD, as a prerelease counting the commits
since (`1.4.4-dev.7+g1a2b3c4`), or `0.0.0-dev.N` when no release is reachable. After a
prerelease tag (`2.0.0-rc.1`) the count extends it (`2.0.0-rc.1.dev.3+g...`) so versions
keep their order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import semver

from shipit.context import Context, GitTag


@dataclass(frozen=True, kw_only=True)
class Version:
    text: str  # full semantic version, build metadata included
    major: int
    minor: int
    patch: int
    prerelease: str | None
    build: str | None
    is_release: bool  # built from a release tag
    raw: str | None = None  # the release tag's name, for releases
    base: str | None = None  # the release a dev version counts from
    distance: int | None = None  # commits since `base`

    @property
    def is_prerelease(self) -> bool:
        return self.prerelease is not None

    @property
    def core(self) -> semver.Version:
        """The version without build metadata, for comparisons."""
        return semver.Version(self.major, self.minor, self.patch, self.prerelease)

    @property
    def tag_safe(self) -> str:
        """The version as a Docker tag (`+` is not allowed there)."""
        return self.text.replace("+", "-")


def parse_release(tag: str, pattern: re.Pattern[str]) -> semver.Version | None:
    """The version a tag releases under `pattern`, or None if it is not a release tag."""
    match = pattern.fullmatch(tag)
    if not match:
        return None
    if "version" in pattern.groupindex:
        text = match.group("version")
    elif pattern.groups == 1:
        text = match.group(1)
    else:
        text = match.group(0)
    if text is None:
        return None
    text = text.removeprefix("v") if not pattern.groups else text
    try:
        return semver.Version.parse(text)
    except ValueError:
        return None


def releases(
    tags: tuple[GitTag, ...], pattern: re.Pattern[str]
) -> list[tuple[GitTag, semver.Version]]:
    """Every tag in the repository that is a release under `pattern`, with its version."""
    found = []
    for tag in tags:
        parsed = parse_release(tag.name, pattern)
        if parsed is not None:
            found.append((tag, parsed))
    return found


def derive(ctx: Context, pattern: re.Pattern[str]) -> Version:
    """The version of this build of an image whose release tags match `pattern`."""
    if ctx.event == "tag" and ctx.tag is not None:
        released = parse_release(ctx.tag, pattern)
        if released is not None:
            return _from_semver(released, is_release=True, raw=ctx.tag)
    return dev_version(ctx, pattern)


def dev_version(ctx: Context, pattern: re.Pattern[str]) -> Version:
    history = ctx.history
    reachable = [
        (tag, version) for tag, version in releases(ctx.tags, pattern) if history.contains(tag.sha)
    ]
    build = f"g{ctx.sha[:7]}"
    if not reachable:
        count = history.count() or 1
        return _from_semver(
            semver.Version(0, 0, 0, f"dev.{count}", build), is_release=False, distance=count
        )
    tag, base = max(reachable, key=lambda item: (item[1], item[0].name))
    distance = history.distance(tag.sha)
    if base.prerelease:
        next_version = semver.Version(
            base.major, base.minor, base.patch, f"{base.prerelease}.dev.{distance}", build
        )
    else:
        next_version = semver.Version(
            base.major, base.minor, base.patch + 1, f"dev.{distance}", build
        )
    return _from_semver(
        next_version,
        is_release=False,
        base=str(base.replace(build=None)),
        distance=distance,
    )


def _from_semver(
    v: semver.Version,
    *,
    is_release: bool,
    raw: str | None = None,
    base: str | None = None,
    distance: int | None = None,
) -> Version:
    return Version(
        text=str(v),
        major=v.major,
        minor=v.minor,
        patch=v.patch,
        prerelease=v.prerelease,
        build=v.build,
        is_release=is_release,
        raw=raw,
        base=base,
        distance=distance,
    )
