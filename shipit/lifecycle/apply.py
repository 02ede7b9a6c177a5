"""Carrying out one repository's plan: delete by digest, untag, and never anything that moved.

Before anything, the registry is probed (`capabilities`); one that refuses deletes gets none.
Then every tag is read again: a tag that points elsewhere than when the plan was made (or
that appeared since) protects both the digest it left and the one it points at now. The
deletions come in units, an image with what goes with it (its platform manifests, its
signatures, attestations and referrers), deleted top first, so the tags go before the rest;
right before a unit, the tags of every digest in it are read once more, and a moved tag skips
the unit. A tag of a digest that stays is removed with the registry's tag DELETE where it has
one, else by pushing a placeholder onto the tag and deleting the placeholder by digest.
The reads run in parallel, `parallel` at a time; the deletions of one repository run one
at a time, because distribution 2.8 cannot take two at once: deleting a manifest walks the
repository's tags to remove those that point at it, and a tag deleted meanwhile by the other
request makes the walk fail with 500 "invalid checksum digest format", the manifest gone but
its tags left pointing at nothing (seen in the lifecycle tests). Repositories follow one
another (`prune.apply`); the client retries what may pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from shipit.lifecycle.apis import DeletePath
from shipit.lifecycle.capabilities import Capabilities, placeholder
from shipit.lifecycle.records import Action, RepositoryPlan, short
from shipit.registry import Registry, RegistryError


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What happened to one action: `done`, or why not (skipped on purpose, or failed)."""

    action: Action
    done: bool
    skipped: str | None = None
    error: str | None = None
    note: str | None = None  # done, with what the registry left to its garbage collection

    @property
    def status(self) -> str:
        if self.action.action == "keep":
            return "kept"
        if self.done:
            said = "deleted" if self.action.action == "delete" else "untagged"
            return f"{said} ({self.note})" if self.note else said
        return f"skipped: {self.skipped}" if self.skipped else f"failed: {self.error}"


@dataclass(frozen=True, kw_only=True)
class RepositoryResult:
    plan: RepositoryPlan
    outcomes: tuple[Outcome, ...]
    capabilities: Capabilities | None = None
    error: str | None = None

    @property
    def complete(self) -> bool:
        """Everything planned was done."""
        return self.error is None and all(
            o.done or o.action.action == "keep" for o in self.outcomes
        )


def apply_plan(
    client: Registry, path: DeletePath, plan: RepositoryPlan, *, parallel: int
) -> RepositoryResult:
    """Carry out `plan` in its registry (see the module docstring), deleting through `path`
    (the registry API or the vendor's); never raises for the registry's failures: the
    result says what was done and what was not."""
    work = [a for a in plan.actions if a.action != "keep"]
    kept = [Outcome(action=a, done=True) for a in plan.actions if a.action == "keep"]
    if plan.error is not None:
        return _nothing(plan, kept, work, plan.error)
    if not work:
        return RepositoryResult(plan=plan, outcomes=tuple(kept))
    try:
        caps = path.probe(
            plan.repository,
            registry=plan.registry,
            tags_too=any(a.action == "untag" for a in work),
        )
        if not caps.deletes:
            return _nothing(plan, kept, work, caps.message or "deletes refused", caps)
        moved = _moved_tags(client, plan, parallel)
    except RegistryError as error:
        return _nothing(plan, kept, work, f"{plan.registry}: {error}")
    units = _units(work)
    runner = _Runner(client, path, plan, caps, moved)
    done = [o for unit in units for o in runner.run(unit)]  # one at a time: see the docstring
    return RepositoryResult(plan=plan, outcomes=tuple(kept + done), capabilities=caps)


def _nothing(
    plan: RepositoryPlan,
    kept: list[Outcome],
    work: Sequence[Action],
    reason: str,
    caps: Capabilities | None = None,
) -> RepositoryResult:
    undone = [Outcome(action=a, done=False, error=reason) for a in work]
    return RepositoryResult(
        plan=plan, outcomes=tuple(kept + undone), capabilities=caps, error=reason
    )


def _moved_tags(client: Registry, plan: RepositoryPlan, parallel: int) -> dict[str, str]:
    """Digests that a tag left or went to since the plan, each with the tag's story."""
    tags = client.tags(plan.repository)
    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="recheck") as pool:
        now = dict(
            zip(
                tags,
                pool.map(lambda t: client.manifest_digest(plan.repository, t), tags),
                strict=True,
            )
        )
    moved: dict[str, str] = {}
    for tag in sorted(set(tags) | set(plan.tags)):
        before, after = plan.tags.get(tag), now.get(tag)
        if after is None or before == after:
            continue  # unchanged, or deleted since: nothing points anywhere new
        story = (
            f"tag {tag} moved since the plan" if before else f"tag {tag} appeared since the plan"
        )
        for digest in (before, after):
            if digest is not None:
                moved.setdefault(digest, story)
    return moved


def _units(work: Sequence[Action]) -> list[list[Action]]:
    """Deletions grouped under the image they go with (top first, in plan order); each untag
    its own unit."""
    deleted = {a.digest for a in work if a.action == "delete"}
    units: dict[str, list[Action]] = {}
    order: list[str] = []
    loose: list[list[Action]] = []
    root_of: dict[str, str] = {}
    for action in work:
        if action.action == "untag":
            loose.append([action])
            continue
        parent = action.subject if action.subject in deleted else None
        root = root_of.get(parent, parent) if parent else action.digest
        root_of[action.digest] = root
        if root not in units:
            units[root] = []
            order.append(root)
        units[root].append(action)
    return [units[r] for r in order] + loose


class _Runner:
    """Carries out one unit at a time (several threads share it: it keeps no state)."""

    def __init__(
        self,
        client: Registry,
        path: DeletePath,
        plan: RepositoryPlan,
        caps: Capabilities,
        moved: Mapping[str, str],
    ) -> None:
        self.client, self.path, self.plan, self.caps, self.moved = client, path, plan, caps, moved
        self.repository = plan.repository

    def run(self, unit: list[Action]) -> list[Outcome]:
        try:
            reason = self._moved(unit)
        except RegistryError as error:
            return [Outcome(action=a, done=False, error=str(error)) for a in unit]
        if reason is not None:
            return [Outcome(action=a, done=False, skipped=reason) for a in unit]
        if unit[0].action == "untag":
            return [self._untag(unit[0])]
        return self._delete(unit)

    def _moved(self, unit: Sequence[Action]) -> str | None:
        """Why the unit must not be touched: a tag of it moved, since the plan or just now."""
        digests = {a.digest for a in unit}
        for digest in digests:
            if digest in self.moved:
                return self.moved[digest]
        tags = [a.tags[0] for a in unit if a.action == "untag"]
        tags += [
            t
            for t, d in sorted(self.plan.tags.items())
            if d in digests and unit[0].action == "delete"
        ]
        for tag in tags:
            now = self.client.manifest_digest(self.repository, tag)
            if now is not None and now != self.plan.tags.get(tag):
                return f"tag {tag} moved to {short(now)}"
        return None

    def _delete(self, unit: Sequence[Action]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for index, action in enumerate(unit):
            tags = tuple(t for t, d in sorted(self.plan.tags.items()) if d == action.digest)
            try:
                note = self.path.delete_manifest(self.repository, action.digest, tags)
            except RegistryError as error:
                outcomes.append(Outcome(action=action, done=False, error=str(error)))
                why = f"not tried after {short(action.digest)} failed"
                outcomes += [Outcome(action=a, done=False, error=why) for a in unit[index + 1 :]]
                return outcomes
            outcomes.append(Outcome(action=action, done=True, note=note))
        return outcomes

    def _untag(self, action: Action) -> Outcome:
        tag = action.tags[0]
        try:
            if self.caps.tag_delete:
                self.path.delete_tag(self.repository, tag)
            else:  # moved onto a placeholder, which is then deleted by digest
                stand_in = placeholder(self.client, self.repository)
                self.client.put_manifest(self.repository, tag, stand_in)
                self.path.delete_manifest(self.repository, stand_in.digest, (tag,))
            if self.client.manifest_digest(self.repository, action.digest) != action.digest:
                return Outcome(action=action, done=False, error=f"{short(action.digest)} is gone")
        except RegistryError as error:
            return Outcome(action=action, done=False, error=str(error))
        return Outcome(action=action, done=True)
