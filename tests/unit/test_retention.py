"""The retention decision, pure: every rule, the closure over indexes and signatures, the
protected tags, untagged manifests, and the order of the rows. No registry."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from shipit.errors import Location
from shipit.lifecycle.protect import floating_patterns, protected_tags
from shipit.lifecycle.records import Action, Holdings, Node
from shipit.lifecycle.retention import Protected, decide, idle_rules, select, version_of
from shipit.registry import OCI_INDEX, OCI_MANIFEST
from shipit.spec import Flavor, Image, KeepRule, RetentionPolicy, TagRule, default_rules

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
HERE = Location(file="shipit.yml", line=1, column=1)


def digest(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def rule(text: str | None = None, **fields: object) -> KeepRule:
    return KeepRule(text=text or str(fields), **fields)  # type: ignore[arg-type]


def policy(*rules: KeepRule, untagged: str = "delete") -> RetentionPolicy:
    return RetentionPolicy(keep=rules, untagged=untagged)


class Repo:
    """A repository to decide on: images by name, each with tags, an age and maybe platforms."""

    def __init__(self) -> None:
        self.tags: dict[str, str] = {}
        self.nodes: dict[str, Node] = {}
        self.attached: dict[str, list[str]] = {}
        self.missing: set[str] = set()

    def image(
        self,
        name: str,
        tags: Sequence[str] = (),
        *,
        days: float | None = 1,
        platforms: Sequence[str] = (),
    ) -> str:
        created = ago(days) if days is not None else None
        children = tuple(self.image(f"{name}/{p}", days=days) for p in platforms)
        d = digest(name)
        kind = OCI_INDEX if children else OCI_MANIFEST
        self.nodes[d] = Node(digest=d, media_type=kind, children=children, created=created)
        for tag in tags:
            self.tags[tag] = d
        return d

    def signature(self, subject: str, suffix: str = ".sig") -> str:
        """A cosign artifact tag next to `subject` (`.sig`, `.att`, `.sbom`, or `` for the
        referrers index, which lists one bundle manifest with a subject)."""
        tag = subject.replace(":", "-") + suffix
        d = digest(tag)
        children: tuple[str, ...] = ()
        if suffix == "":
            bundle = digest(f"bundle of {subject}")
            self.nodes[bundle] = Node(digest=bundle, media_type=OCI_MANIFEST, subject=subject)
            self.attached.setdefault(subject, []).append(bundle)
            children = (bundle,)
        media = OCI_INDEX if children else OCI_MANIFEST
        self.nodes[d] = Node(digest=d, media_type=media, children=children)
        self.tags[tag] = d
        self.attached.setdefault(subject, []).append(d)
        return d

    def holdings(self) -> Holdings:
        return Holdings(
            registry="r.example/ns",
            host="r.example",
            repository="ns/app",
            tags=dict(self.tags),
            nodes=dict(self.nodes),
            attached={s: tuple(sorted(a)) for s, a in self.attached.items()},
            missing=frozenset(self.missing),
        )

    def decide(
        self, retention: RetentionPolicy, protected: Protected | None = None
    ) -> dict[str, Action]:
        rows = decide(self.holdings(), retention, protected or Protected(), NOW)
        return {r.digest if r.action != "untag" else f"untag {r.tags[0]}": r for r in rows}


def kept(rows: Mapping[str, Action]) -> set[str]:
    return {d for d, r in rows.items() if r.action == "keep"}


def deleted(rows: Mapping[str, Action]) -> set[str]:
    return {d for d, r in rows.items() if r.action == "delete"}


# -- picking tags --------------------------------------------------------------------------


def test_a_tags_rule_is_searched_in_the_tag_as_grep_does() -> None:
    repo = Repo()
    main, old = repo.image("main", ["main"]), repo.image("old", ["main-old", "remain"])
    other = repo.image("other", ["develop"])
    rows = repo.decide(policy(rule(tags="main")))
    assert kept(rows) == {main, old} and deleted(rows) == {other}  # "main" is in "remain"
    assert rows[main].rule == "keep #1 {'tags': 'main'}"  # the rule's text, as the test wrote it
    rows = repo.decide(policy(rule(tags="^main$")))  # anchored at both ends: exactly one tag
    assert kept(rows) == {main} and deleted(rows) == {old, other}


def test_a_prefix_pattern_and_a_fully_anchored_one_keep_what_they_were_written_for() -> None:
    tags = {"pr-5": "a", "pr-6": "b", "main": "c", "fix-pr-7": "d", "v1.0.0": "e"}
    assert select(rule(tags="^pr-"), tags, {}, NOW) == {"pr-5", "pr-6"}
    assert select(rule(tags="pr-"), tags, {}, NOW) == {"pr-5", "pr-6", "fix-pr-7"}
    # GitLab-style patterns that span the whole tag keep working: a superset, never less
    assert select(rule(tags="pr-.*"), tags, {}, NOW) >= {"pr-5", "pr-6"}
    assert select(rule(tags="^main$"), tags, {}, NOW) == {"main"}
    assert select(rule(tags=r"^v?\d+\.\d+\.\d+$"), tags, {}, NOW) == {"v1.0.0"}


def test_a_rule_that_picks_no_tag_is_named_and_a_rule_that_picks_one_is_not() -> None:
    repo = Repo()
    repo.image("pr", ["pr-6"])
    release = repo.image("release", ["v1.0.0"])
    repo.signature(release)  # artifact tags are never what a rule is meant to pick
    found = idle_rules(
        repo.holdings(),
        policy(
            rule(tags="^pr-", text="{tags: '^pr-'}"),
            rule(tags="^main$", text="{tags: '^main$'}"),
            rule(tags="^sha256-", text="{tags: '^sha256-'}"),
            rule(semver=True, newest=1, text="{semver: true, newest: 1}"),
        ),
    )
    assert found == (
        "keep #2 {tags: '^main$'} picked no tag in ns/app",
        "keep #3 {tags: '^sha256-'} picked no tag in ns/app",
    )


def test_semver_picks_versions_with_or_without_a_v_and_nothing_else() -> None:
    tags = {"1.2.3": "a", "v1.2.4": "b", "1.2": "c", "latest": "d", "2.0.0-rc.1": "e", "v1": "f"}
    picked = select(rule(semver=True), tags, {}, NOW)
    assert picked == {"1.2.3", "v1.2.4", "2.0.0-rc.1"}
    assert version_of("V3.0.0") is not None and version_of("1.2.3.4") is None


def test_newest_counts_images_not_tags_by_creation_time() -> None:
    repo = Repo()
    d1 = repo.image("d1", ["sha-1", "build-1"], days=1)  # two tags, one image
    d2 = repo.image("d2", ["sha-2"], days=2)
    d3 = repo.image("d3", ["sha-3"], days=3)
    rows = repo.decide(policy(rule(newest=2)))
    assert kept(rows) == {d1, d2} and deleted(rows) == {d3}
    assert set(rows[d1].tags) == {"sha-1", "build-1"}


def test_newest_puts_images_of_unknown_age_last_and_keeps_them_to_be_safe() -> None:
    repo = Repo()
    young = repo.image("young", ["a"], days=1)
    unknown = repo.image("unknown", ["b"], days=None)
    old = repo.image("old", ["c"], days=9)
    created = {d: n.created for d, n in repo.nodes.items()}
    assert select(rule(newest=2), repo.tags, created, NOW) == {"a", "c"}
    rows = repo.decide(policy(rule(newest=1)))
    assert kept(rows) == {young, unknown} and deleted(rows) == {old}
    assert rows[unknown].rule == "creation time unknown: kept to be safe"


def test_newest_per_minor_keeps_the_highest_patches_of_each_line_by_version() -> None:
    repo = Repo()
    names = ["1.2.0", "1.2.1", "1.2.2", "1.3.0", "1.3.1", "2.0.0"]
    # created in the reverse order of the versions: the count is by version, not by time
    digests = {n: repo.image(n, [n, f"v{n}"], days=10 + i) for i, n in enumerate(names)}
    rows = repo.decide(policy(rule(semver=True, newest_per_minor=2)))
    assert kept(rows) == {digests[n] for n in ("1.2.1", "1.2.2", "1.3.0", "1.3.1", "2.0.0")}
    assert deleted(rows) == {digests["1.2.0"]}
    assert set(rows[digests["1.2.2"]].tags) == {"1.2.2", "v1.2.2"}  # one version, both tags


def test_newest_per_major_and_prereleases_in_version_order() -> None:
    tags = {t: t for t in ("1.0.0", "1.9.0", "1.10.0", "2.0.0-rc.1", "2.0.0", "2.0.0-rc.2")}
    picked = select(rule(semver=True, newest_per_major=2), tags, {}, NOW)
    assert picked == {"1.10.0", "1.9.0", "2.0.0", "2.0.0-rc.2"}


def test_younger_than_keeps_only_what_was_created_since() -> None:
    repo = Repo()
    young = repo.image("young", ["pr-2"], days=3)
    old = repo.image("old", ["pr-1"], days=30)
    rows = repo.decide(policy(rule(tags="pr-.*", younger_than=14 * 86400)))
    assert kept(rows) == {young} and deleted(rows) == {old}


def test_the_limits_of_one_rule_all_apply_and_the_rules_are_ored() -> None:
    repo = Repo()
    a = repo.image("a", ["pr-1"], days=1)
    b = repo.image("b", ["pr-2"], days=2)
    c = repo.image("c", ["pr-3"], days=20)  # among the newest 3, but too old
    d = repo.image("d", ["main"], days=40)
    rows = repo.decide(
        policy(rule(tags="pr-.*", newest=3, younger_than=14 * 86400), rule(tags="main"))
    )
    assert kept(rows) == {a, b, d} and deleted(rows) == {c}
    assert rows[d].rule.startswith("keep #2 ")


def test_the_common_policy_keep_the_last_10_keep_semver_delete_dev() -> None:
    repo = Repo()
    devs = [repo.image(f"dev{i}", [f"dev-{i}"], days=i) for i in range(3)]  # the newest
    builds = [repo.image(f"b{i}", [f"sha-{i}"], days=10 + i) for i in range(12)]
    release = repo.image("rel", ["1.0.0"], days=400)
    rows = repo.decide(policy(rule(tags="^(?!dev-)", newest=10), rule(semver=True)))
    assert kept(rows) == {*builds[:10], release}
    assert deleted(rows) == {*devs, *builds[10:]}
    # unanchored, the lookahead is tried at every position: `ev-0` is not `dev-`, so it picks
    # every tag, and the newest 10 include the dev builds: searching errs towards keeping
    rows = repo.decide(policy(rule(tags="(?!dev-).+", newest=10), rule(semver=True)))
    assert kept(rows) == {*devs, *builds[:7], release}


# -- decided on digests ----------------------------------------------------------------------


def test_a_kept_image_keeps_its_platforms_and_signatures_and_loses_only_unkept_tags() -> None:
    repo = Repo()
    index = repo.image("rel", ["1.0.0", "sha-abc"], platforms=["amd64", "arm64"])
    amd64, arm64 = repo.nodes[index].children
    legacy = repo.signature(amd64)
    attestation = repo.signature(index, ".att")
    sbom = repo.signature(index, ".sbom")
    referrers = repo.signature(arm64, "")
    bundle = repo.nodes[referrers].children[0]
    rows = repo.decide(policy(rule(semver=True)))
    assert kept(rows) == {index, amd64, arm64, legacy, attestation, sbom, referrers, bundle}
    assert rows["untag sha-abc"].digest == index  # the image stays under 1.0.0
    assert rows[amd64].rule == f"in index {index[:19]}, kept"
    assert rows[legacy].kind == "signature" and rows[referrers].kind == "referrers index"
    assert rows[bundle].kind == "referrer"


def test_a_deleted_image_takes_its_platforms_and_signatures_with_it() -> None:
    repo = Repo()
    index = repo.image("old", ["0.9.0"], platforms=["amd64"])
    [amd64] = repo.nodes[index].children
    signatures = {repo.signature(index), repo.signature(amd64, "")}
    bundle = repo.nodes[max(signatures, key=lambda d: len(repo.nodes[d].children))].children[0]
    keep = repo.image("new", ["1.0.0"])
    rows = repo.decide(policy(rule(tags="1\\..*")))
    assert deleted(rows) == {index, amd64, bundle, *signatures}
    assert kept(rows) == {keep}
    assert rows[amd64].rule == f"only in index {index[:19]}, deleted"
    sig = next(d for d in signatures if not repo.nodes[d].children)
    assert rows[sig].rule == f"signature of {index[:19]}, deleted"


def test_a_platform_manifest_shared_with_a_kept_index_stays() -> None:
    repo = Repo()
    shared = repo.image("shared", days=5)
    old = digest("old-index")
    new = digest("new-index")
    repo.nodes[old] = Node(digest=old, media_type=OCI_INDEX, children=(shared,), created=ago(50))
    repo.nodes[new] = Node(digest=new, media_type=OCI_INDEX, children=(shared,), created=ago(5))
    repo.tags.update({"old": old, "new": new})
    rows = repo.decide(policy(rule(tags="new")))
    assert kept(rows) == {new, shared} and deleted(rows) == {old}


def test_protected_tags_keep_their_images_whatever_the_rules_say() -> None:
    repo = Repo()
    latest = repo.image("latest", ["latest", "1.4", "1.4.0"], days=300)
    head = repo.image("head", ["main", "sha-1234567"], days=200)
    other = repo.image("other", ["feature"], days=1)
    protected = Protected(floating=(re.compile(r"\d+\.\d+"), re.compile("latest")),
                          planned=frozenset({"main", "sha-1234567"}))  # fmt: skip
    rows = repo.decide(policy(rule(tags="nothing")), protected)
    assert kept(rows) == {latest, head} and deleted(rows) == {other}
    assert rows[head].rule == "main: published for the current commit"
    assert rows[latest].rule == "1.4: floating tag"
    assert rows["untag 1.4.0"].digest == latest


def test_untagged_manifests_found_through_their_signatures_follow_untagged() -> None:
    repo = Repo()
    stray = digest("stray")  # `main` moved on; only its signature still names it
    repo.nodes[stray] = Node(digest=stray, media_type=OCI_MANIFEST, created=ago(1))
    signature = repo.signature(stray)
    repo.image("main", ["main"])
    rows = repo.decide(policy(rule(tags="main")))
    assert {stray, signature} <= deleted(rows)
    assert rows[stray].kind == "untagged" and rows[stray].rule == "untagged: delete"
    rows = repo.decide(policy(rule(tags="main"), untagged="keep"))
    assert {stray, signature} <= kept(rows)
    assert rows[stray].rule == "untagged: keep"


def test_a_signature_whose_image_is_gone_is_deleted() -> None:
    repo = Repo()
    gone = digest("gone")
    signature = repo.signature(gone)
    repo.missing.add(gone)
    repo.image("main", ["main"])
    rows = repo.decide(policy(rule(tags="main"), untagged="keep"))
    assert rows[signature].action == "delete"
    assert rows[signature].rule == f"signature of {gone[:19]}, which is gone"


def test_rows_come_image_by_image_newest_first_with_what_belongs_to_each() -> None:
    repo = Repo()
    old = repo.image("old", ["0.1.0"], days=30, platforms=["amd64"])
    new = repo.image("new", ["0.2.0", "sha-new"], days=1, platforms=["amd64"])
    sig = repo.signature(new)
    rows = decide(repo.holdings(), policy(rule(semver=True)), Protected(), NOW)
    order = [(r.digest, r.action) for r in rows]
    assert order == [
        (new, "keep"), (new, "untag"), (repo.nodes[new].children[0], "keep"), (sig, "keep"),
        (old, "keep"), (repo.nodes[old].children[0], "keep"),
    ]  # fmt: skip


# -- which tags float --------------------------------------------------------------------


def image_with(rules: tuple[TagRule, ...], flavor: Flavor | None = None) -> Image:
    return Image(
        name="app", location=HERE, context=Path(), tags=rules, flavor=flavor or Flavor(),
    )  # fmt: skip


def matches(patterns: Sequence[re.Pattern[str]], tag: str) -> bool:
    return any(p.fullmatch(tag) for p in patterns)


def test_the_default_rules_float_major_minor_major_and_latest_only() -> None:
    patterns = floating_patterns(image_with(default_rules(HERE)), {})
    for tag in ("1.4", "1", "latest", "12.0"):
        assert matches(patterns, tag), tag
    for tag in ("1.4.3", "v1.4", "main", "sha-1234567", "latest-old", "1.4-rc"):
        assert not matches(patterns, tag), tag


@pytest.mark.parametrize(
    ("rules", "flavor", "floats", "stays"),
    [
        (
            (TagRule(type="semver", location=HERE, pattern="v{{major}}.{{minor}}"),),
            Flavor(latest="false"),
            ["v1.4"],
            ["latest", "1.4", "v1.4.2"],
        ),
        (
            (TagRule(type="semver", location=HERE, pattern="{{major}}", prefix="py3-"),),
            Flavor(suffix="-slim", suffix_on_latest=True),
            ["py3-2-slim", "latest-slim"],
            ["2-slim", "latest"],
        ),
        (
            (TagRule(type="semver", location=HERE, pattern="{{major + 1}}"),),  # cannot tell
            Flavor(latest="false"),
            [],
            ["2", "latest"],
        ),
        (
            (TagRule(type="semver", location=HERE, pattern="stable"),),  # moves every release
            Flavor(latest="false"),
            ["stable"],
            ["1.0.0"],
        ),
    ],
)
def test_floating_shapes_follow_prefixes_suffixes_and_flavor(
    rules: tuple[TagRule, ...], flavor: Flavor, floats: list[str], stays: list[str]
) -> None:
    patterns = floating_patterns(image_with(rules, flavor), {})
    assert [t for t in floats if matches(patterns, t)] == floats
    assert [t for t in stays if matches(patterns, t)] == []


def test_protected_tags_add_what_the_plan_publishes_now() -> None:
    protected = protected_tags(image_with(default_rules(HERE)), {}, ["main", "sha-abcdef0"])
    assert protected.reason("main") == "main: published for the current commit"
    assert protected.reason("2.1") == "2.1: floating tag"
    assert protected.reason("pr-7") is None
