"""The retention decision: which digests of a repository stay, which go, and why. Pure.

Decided on digests, not tags (DESIGN section 10):

1. Every tag is kept or not: protected tags first (a floating tag such as `latest`, `1.4` or
   `1`, and what the spec would publish for the current commit), then each `keep` rule in
   order; rules are OR'ed, the limits inside one rule (`newest`, `newest_per_minor`,
   `newest_per_major`, `younger_than`) all apply. A digest is kept if any of its tags is.
   A rule's `tags` pattern is searched in the tag (`re.search`, as grep reads a regular
   expression), so a pattern that matches more only keeps more: keep rules err towards
   keeping, and `^...$` makes one exact.
2. The keep set is closed: the platform manifests of a kept index, and what is attached to a
   kept digest (signatures, attestations, SBOMs, referrers, the referrers index of cosign 3)
   are kept with it; `untagged: keep` keeps the manifests found without any tag.
3. Everything else is deleted, its attachments with it. A tag that no rule keeps, on a digest
   that stays, is untagged (the image stays under its other tags).

An image whose creation time is unknown is never deleted by an age or count rule: it is kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import semver

from shipit.lifecycle.records import Action, Holdings, Node, short, tag_subject
from shipit.registry import INDEX_MEDIA_TYPES
from shipit.spec import KeepRule, RetentionPolicy


@dataclass(frozen=True, kw_only=True)
class Protected:
    """Tags that are always kept: floating ones (by shape) and those planned for HEAD."""

    floating: tuple[re.Pattern[str], ...] = ()
    planned: frozenset[str] = frozenset()

    def reason(self, tag: str) -> str | None:
        if tag in self.planned:
            return f"{tag}: published for the current commit"
        if any(p.fullmatch(tag) for p in self.floating):
            return f"{tag}: floating tag"
        return None


def version_of(tag: str) -> semver.Version | None:
    """The semantic version a tag names (`1.2.3`, `v1.2.3-rc.1`), or None."""
    text = tag[1:] if tag[:1] in ("v", "V") else tag
    try:
        return semver.Version.parse(text)
    except ValueError:
        return None


def picks(rule: KeepRule, tags: Iterable[str]) -> set[str]:
    """The tags `rule` picks (`tags:` found anywhere in the tag, `semver:`), before its limits."""
    pattern = re.compile(rule.tags) if rule.tags is not None else None
    return {
        t
        for t in tags
        if (pattern is None or pattern.search(t)) and (not rule.semver or version_of(t))
    }


def select(
    rule: KeepRule, tags: Mapping[str, str], created: Mapping[str, datetime | None], now: datetime
) -> set[str]:
    """The tags (of `tags`: tag -> digest) that `rule` keeps."""
    picked = picks(rule, tags)
    kept = set(picked)
    if rule.younger_than is not None:
        since = now - timedelta(seconds=rule.younger_than)
        kept &= {t for t in picked if (when := created.get(tags[t])) is not None and when >= since}
    if rule.newest is not None:
        newest = _newest_digests({tags[t] for t in picked}, created, rule.newest)
        kept &= {t for t in picked if tags[t] in newest}
    for count, width in ((rule.newest_per_minor, 2), (rule.newest_per_major, 1)):
        if count is not None:
            kept &= _highest_per_line(picked, count, width)
    return kept


def _newest_digests(
    digests: Iterable[str], created: Mapping[str, datetime | None], count: int
) -> set[str]:
    """The `count` newest digests by creation time (unknown last, then by digest)."""

    def key(digest: str) -> tuple[bool, float, str]:
        when = created.get(digest)
        return (when is None, -when.timestamp() if when else 0.0, digest)

    return set(sorted(digests, key=key)[:count])


def _highest_per_line(tags: Iterable[str], count: int, width: int) -> set[str]:
    """The tags naming the `count` highest versions of each major (width 1) or minor line."""
    versions = {t: v for t in tags if (v := version_of(t)) is not None}
    lines: dict[tuple[int, ...], set[semver.Version]] = {}
    for version in versions.values():
        lines.setdefault((version.major, version.minor)[:width], set()).add(version)
    chosen = {v for line in lines.values() for v in sorted(line, reverse=True)[:count]}
    return {t for t, v in versions.items() if v in chosen}


def tag_reasons(
    holdings: Holdings, policy: RetentionPolicy, protected: Protected, now: datetime
) -> dict[str, str]:
    """Why each kept tag is kept (protected first, then the rules in order); tags not here go."""
    tags = {t: d for t, d in holdings.tags.items() if tag_subject(t) is None}
    created = {d: node.created for d, node in holdings.nodes.items()}
    reasons: dict[str, str] = {}
    for tag in tags:
        why = protected.reason(tag)
        if why is not None:
            reasons[tag] = why
    for index, rule in enumerate(policy.keep, start=1):
        for tag in sorted(select(rule, tags, created, now)):
            reasons.setdefault(tag, f"keep #{index} {rule.text}")
    return reasons


def idle_rules(holdings: Holdings, policy: RetentionPolicy) -> tuple[str, ...]:
    """A warning for each keep rule that picks no tag of the repository: a pattern that
    finds nothing is more often a mistake than a rule for later."""
    tags = [t for t in holdings.tags if tag_subject(t) is None]
    return tuple(
        f"keep #{index} {rule.text} picked no tag in {holdings.repository}"
        for index, rule in enumerate(policy.keep, start=1)
        if not picks(rule, tags)
    )


class _Graph:
    """Who refers to whom: tags, index children, attachments; and the kinds of manifests."""

    def __init__(self, holdings: Holdings) -> None:
        self.nodes = holdings.nodes
        self.by_digest: dict[str, list[str]] = {}
        for tag, digest in sorted(holdings.tags.items()):
            self.by_digest.setdefault(digest, []).append(tag)
        self.parent: dict[str, str] = {}
        for digest, node in sorted(holdings.nodes.items()):
            for child in node.children:
                self.parent.setdefault(child, digest)
        self.subject: dict[str, str] = {}
        self.kind: dict[str, str] = {}
        for subject, artifacts in holdings.attached.items():
            for artifact in artifacts:
                self.subject.setdefault(artifact, subject)
        for tag, digest in holdings.tags.items():
            found = tag_subject(tag)
            if found is not None:
                self.kind[digest] = found[1]
        self.attached = holdings.attached

    def image_tags(self, digest: str) -> list[str]:
        return [t for t in self.by_digest.get(digest, []) if tag_subject(t) is None]

    def kind_of(self, digest: str) -> str:
        if digest in self.kind:
            return self.kind[digest]
        if digest in self.subject:
            return "referrer"
        if digest in self.parent:
            return "platform"
        if not self.image_tags(digest):
            return "untagged"
        node = self.nodes.get(digest)
        return "index" if node and node.media_type in INDEX_MEDIA_TYPES else "image"

    def related(self, digest: str) -> list[tuple[str, str]]:
        """(digest, how it relates) for what goes with `digest`: children, then attachments."""
        node = self.nodes.get(digest)
        children = [(c, "platform") for c in (node.children if node else ())]
        # what an artifact tag names first (a referrers index leads to the bundles it lists)
        attached = sorted(self.attached.get(digest, ()), key=lambda a: (a not in self.kind, a))
        return children + [(a, "attached") for a in attached]

    def first_reason(self, digest: str, reasons: Mapping[str, str]) -> str | None:
        """Why the digest's first kept tag is kept, protected tags before rules."""
        kept = [t for t in self.image_tags(digest) if t in reasons]
        protected = [t for t in kept if not reasons[t].startswith("keep #")]
        chosen = (protected or kept)[:1]
        return reasons[chosen[0]] if chosen else None


def decide(
    holdings: Holdings, policy: RetentionPolicy, protected: Protected, now: datetime
) -> tuple[Action, ...]:
    """What to do with every manifest of the repository, in the order a table shows them."""
    graph = _Graph(holdings)
    reasons = tag_reasons(holdings, policy, protected, now)
    keep = _roots_kept(graph, holdings, reasons, policy)
    _close(graph, keep)
    return tuple(_rows(graph, holdings, keep, reasons))


def _roots_kept(
    graph: _Graph, holdings: Holdings, reasons: Mapping[str, str], policy: RetentionPolicy
) -> dict[str, str]:
    keep: dict[str, str] = {}
    for digest in sorted(holdings.nodes):
        tags = graph.image_tags(digest)
        why = graph.first_reason(digest, reasons)
        if why is not None:
            keep[digest] = why
        elif tags and holdings.nodes[digest].created is None and _has_time_limits(policy):
            keep[digest] = "creation time unknown: kept to be safe"
        elif graph.kind_of(digest) == "untagged" and policy.untagged == "keep":
            keep[digest] = "untagged: keep"
    return keep


def _has_time_limits(policy: RetentionPolicy) -> bool:
    return any(r.newest is not None or r.younger_than is not None for r in policy.keep)


def _close(graph: _Graph, keep: dict[str, str]) -> None:
    """Add to `keep` what kept digests refer to: platform manifests and attachments."""
    todo = list(keep)
    while todo:
        digest = todo.pop()
        for other, how in graph.related(digest):
            if other in keep or other not in graph.nodes:
                continue
            what = "in index" if how == "platform" else f"{graph.kind_of(other)} of"
            keep[other] = f"{what} {short(digest)}, kept"
            todo.append(other)


def _rows(
    graph: _Graph, holdings: Holdings, keep: Mapping[str, str], reasons: Mapping[str, str]
) -> list[Action]:
    """Rows grouped: each image with its untag rows, platforms and attachments after it."""
    rows: list[Action] = []
    shown: set[str] = set()

    def emit(digest: str) -> None:
        if digest in shown or digest not in graph.nodes:
            return
        shown.add(digest)
        rows.append(_row(graph, holdings, digest, keep, reasons))
        if digest in keep:
            for tag in graph.image_tags(digest):
                if tag not in reasons:
                    rows.append(_untag_row(graph.nodes[digest], tag, keep[digest]))
        for other, _ in graph.related(digest):
            emit(other)

    for digest in _roots_in_order(graph, holdings):
        emit(digest)
    # what no root leads to (attachments of a missing image): an index before what it lists,
    # as deletes go top first (Docker Hub refuses to delete a manifest an index lists)
    for digest in sorted(graph.nodes, key=lambda d: (d in graph.parent, d)):
        emit(digest)
    return rows


def _roots_in_order(graph: _Graph, holdings: Holdings) -> list[str]:
    """Tagged images newest first, then untagged ones; never a platform or an attachment."""
    roots = [
        d
        for d in holdings.nodes
        if d not in graph.parent
        and d not in graph.subject
        and graph.kind_of(d) != "referrers index"
    ]

    def key(digest: str) -> tuple[bool, float, str]:
        when = holdings.nodes[digest].created
        return (when is None, -when.timestamp() if when else 0.0, digest)

    tagged = sorted((d for d in roots if graph.image_tags(d)), key=key)
    return tagged + sorted((d for d in roots if not graph.image_tags(d)), key=key)


def _row(
    graph: _Graph,
    holdings: Holdings,
    digest: str,
    keep: Mapping[str, str],
    reasons: Mapping[str, str],
) -> Action:
    node = graph.nodes[digest]
    kind = graph.kind_of(digest)
    tags = tuple(graph.by_digest.get(digest, ()))
    subject = graph.subject.get(digest) or graph.parent.get(digest)
    if digest in keep:
        kept_tags = tuple(t for t in tags if t in reasons or tag_subject(t))
        return Action(
            digest=digest, tags=kept_tags, kind=kind, action="keep", rule=keep[digest],
            created=node.created, subject=subject,
        )  # fmt: skip
    return Action(
        digest=digest, tags=tags, kind=kind, action="delete",
        rule=_delete_reason(graph, holdings, digest, kind), created=node.created, subject=subject,
    )  # fmt: skip


def _delete_reason(graph: _Graph, holdings: Holdings, digest: str, kind: str) -> str:
    if kind == "untagged":
        return "untagged: delete"
    subject = graph.subject.get(digest)
    if subject is not None:
        gone = subject in holdings.missing
        return f"{kind} of {short(subject)}, " + ("which is gone" if gone else "deleted")
    parent = graph.parent.get(digest)
    if parent is not None:
        return f"only in index {short(parent)}, deleted"
    return "no rule keeps its tags"


def _untag_row(node: Node, tag: str, why_kept: str) -> Action:
    return Action(
        digest=node.digest,
        tags=(tag,),
        kind="tag",
        action="untag",
        rule=f"no rule keeps the tag; the image stays ({why_kept})",
        created=node.created,
    )
