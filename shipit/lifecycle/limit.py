"""How much one `shipit prune --apply` may delete in a repository (`--max-delete`). Pure.

A policy that is wrong (a pattern that finds nothing, a limit of 1 where 10 was meant) keeps
less than it should; on a scheduled `--apply` that empties a repository before anyone reads
the plan. So `--apply` refuses, before it deletes anything anywhere, a plan that deletes more
than half of a repository's tagged images (digests that a tag other than an artifact tag
names), unless `--max-delete N` (at most N images) or `--max-delete P%` allows it;
`--max-delete 100%` lifts the limit. The dry run says when `--apply` would refuse. What
counts is images, as the decision is made on digests: `1.2.3` and `v1.2.3` on one image are
one; platform manifests and signatures go with their image and are not counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from shipit.lifecycle.records import RepositoryPlan, tag_subject

_LIMIT = re.compile(r"(\d{1,9})(%?)")
DEFAULT_LIMIT: Final = "50%"


@dataclass(frozen=True, kw_only=True)
class DeleteLimit:
    """At most `count` tagged images, or at most `percent` of them, per repository."""

    text: str  # as given: "50%", "12"
    count: int | None = None
    percent: int | None = None

    @classmethod
    def parse(cls, text: str = DEFAULT_LIMIT) -> DeleteLimit:
        """`N` or `P%` (0 to 100); ValueError with what is wrong otherwise."""
        match = _LIMIT.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"'{text}' is not a number of images (12) or a percentage (50%)")
        number = int(match[1])
        if not match[2]:
            return cls(text=f"{number}", count=number)
        if number > 100:
            raise ValueError(f"'{text}': a percentage is at most 100%")
        return cls(text=f"{number}%", percent=number)

    def allows(self, deleted: int, tagged: int) -> bool:
        if self.count is not None:
            return deleted <= self.count
        return deleted * 100 <= (self.percent or 0) * tagged

    def refusal(self, repository: RepositoryPlan) -> Refusal | None:
        """Why `--apply` refuses this repository's plan, or None when the limit allows it."""
        tagged = tagged_images(repository)
        deleted = len(tagged & {a.digest for a in repository.actions if a.action == "delete"})
        if deleted == 0 or self.allows(deleted, len(tagged)):
            return None
        return Refusal(
            repository=repository.ref,
            registry=repository.registry,
            deleted=deleted,
            tagged=len(tagged),
            limit=self.text,
        )


@dataclass(frozen=True, kw_only=True)
class Refusal:
    """A repository whose plan deletes more tagged images than the limit allows."""

    repository: str  # host/repository
    registry: str  # the spec's registry url
    deleted: int
    tagged: int
    limit: str

    def __str__(self) -> str:
        share = self.deleted * 100 // self.tagged
        return (
            f"{self.repository} ({self.registry}): the plan deletes {self.deleted} of its"
            f" {self.tagged} tagged images ({share}%), more than --max-delete {self.limit}"
            " allows"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "repository": self.repository,
            "registry": self.registry,
            "deleted": self.deleted,
            "tagged": self.tagged,
            "max_delete": self.limit,
            "message": str(self),
        }


def tagged_images(repository: RepositoryPlan) -> set[str]:
    """The digests that a tag names, artifact tags (`sha256-<hex>.sig`, ...) aside."""
    return {d for t, d in repository.tags.items() if tag_subject(t) is None}


def refusals(repositories: tuple[RepositoryPlan, ...], limit: DeleteLimit) -> tuple[Refusal, ...]:
    """Every repository whose plan the limit refuses."""
    found = (limit.refusal(repository) for repository in repositories)
    return tuple(r for r in found if r is not None)


def refusal_hint(refused: tuple[Refusal, ...]) -> str:
    """What to do: read the plan, then allow what it deletes (the largest count is enough)."""
    most = max((r.deleted for r in refused), default=0)
    return (
        "read the plan (`shipit prune`) and the rules' warnings; if it is what you want, allow"
        f" it with `--max-delete {most}` (at most {most} images per repository) or"
        " `--max-delete 100%` (no limit)"
    )
