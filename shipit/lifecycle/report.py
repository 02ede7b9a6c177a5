"""How `shipit prune` and `shipit promote` show what they plan and what they did.

The dry run's table has one row per manifest (and one per tag that goes from an image that
stays): registry, repository, digest, tags, created, action and the rule that decided. Its
JSON is the plan itself (`PrunePlan.to_json`), which `--plan FILE` reads back. After
`--apply` each row also says what happened; the report document (`--report FILE`) holds all
of it, with what each registry could do.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipit.lifecycle.apis import NAMES
from shipit.lifecycle.limit import DeleteLimit, Refusal, refusal_hint
from shipit.lifecycle.records import Action, PrunePlan, RepositoryPlan, short_tag
from shipit.log import PLAIN, Style
from shipit.render import table

if TYPE_CHECKING:
    from shipit.lifecycle.apply import Outcome, RepositoryResult
    from shipit.lifecycle.promote import PromoteResult
    from shipit.lifecycle.prune import PruneResult

REPORT_SCHEMA = 1
_HEADERS = ["registry", "repository", "digest", "tags", "created", "action", "rule"]


def plan_table(plan: PrunePlan, style: Style = PLAIN, refused: Sequence[Refusal] = ()) -> str:
    """The dry run: every row, a count per repository, the keep rules that picked nothing,
    and the limit `--apply` would hit."""
    rows = [_cells(repo, action) for repo in plan.repositories for action in repo.actions]
    lines = [_table(_HEADERS, rows, style)] if rows else []
    lines += [_totals(repo) for repo in plan.repositories]
    lines += [f"{style.paint('warning', 'warn')}: {w}" for w in rule_warnings(plan)]
    lines += [f"{style.paint('--apply would refuse', 'bad')}: {r}" for r in refused]
    if refused:
        lines.append(f"({refusal_hint(tuple(refused))})")
    lines.append("dry run: nothing was changed; `shipit prune --apply` does it")
    return "\n".join(lines)


def rule_warnings(plan: PrunePlan) -> list[str]:
    """The keep rules that picked no tag where something goes, with their registry."""
    return [f"{w} ({repo.registry})" for repo in plan.repositories for w in repo.warnings]


def plan_document(
    plan: PrunePlan, limit: DeleteLimit, refused: Sequence[Refusal]
) -> dict[str, Any]:
    """The dry run's JSON: the plan (which `--plan FILE` reads back) and the limit's verdict."""
    return {
        **plan.to_json(),
        "max_delete": limit.text,
        "refused": [r.to_json() for r in refused],
    }


def result_table(result: PruneResult, style: Style = PLAIN) -> str:
    """After --apply: the rows that changed something (or should have), and the outcome."""
    rows = [
        [*_cells(repo.plan, o.action), o.status]
        for repo in result.repositories
        for o in repo.outcomes
        if o.action.action != "keep"
    ]
    lines = [_table([*_HEADERS, "result"], rows, style)] if rows else []
    for repo in result.repositories:
        done = sum(1 for o in repo.outcomes if o.done and o.action.action != "keep")
        undone = sum(1 for o in repo.outcomes if not o.done)
        lines.append(f"{repo.plan.ref} ({repo.plan.registry}): {done} done, {undone} not done")
    lines.append(f"result: {style.status('success' if result.complete else 'failed')}")
    return "\n".join(lines)


def result_document(result: PruneResult) -> dict[str, Any]:
    """The report of `--apply`: per repository, what the registry could do and each outcome."""
    return {
        "schema": REPORT_SCHEMA,
        "command": "prune",
        "status": "success" if result.complete else "failed",
        "spec": result.plan.spec,
        "planned": result.plan.to_json()["made"],
        "started": _time(result.started),
        "finished": _time(result.finished),
        "repositories": [_repository(r) for r in result.repositories],
    }


def promote_lines(result: PromoteResult, style: Style = PLAIN) -> str:
    """A line per target: promoted (digest, tags) or failed."""
    lines = []
    for target in result.targets:
        word = style.status("failed  " if target.error else "promoted")
        shown = f"{target.repository}@{target.digest}" if target.digest else target.repository
        tagged = f" ({', '.join(target.tags)})" if target.tags else ""
        lines.append(f"{word}  {shown}{tagged}")
    return "\n".join(lines) if lines else f"nothing promoted: {result.error}"


def promote_errors(result: PromoteResult) -> list[str]:
    """What went wrong: the refusal, or each target's failure."""
    errors = [f"{t.registry}: {t.error}" for t in result.targets if t.error]
    return [result.error, *errors] if result.error else errors


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    """Write a document atomically: a reader never sees half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(document, indent=2) + "\n")
    Path(tmp).replace(path)


def _repository(result: RepositoryResult) -> dict[str, Any]:
    document = result.plan.to_json()
    del document["actions"]
    document["capabilities"] = result.capabilities.to_json() if result.capabilities else None
    document["error"] = result.error
    document["outcomes"] = [_outcome(o) for o in result.outcomes]
    return document


def _outcome(outcome: Outcome) -> dict[str, Any]:
    return {
        **outcome.action.to_json(),
        "done": outcome.done,
        "status": outcome.status,
        "skipped": outcome.skipped,
        "error": outcome.error,
        "note": outcome.note,
    }


def _cells(repo: RepositoryPlan, action: Action) -> list[str]:
    created = action.created.strftime("%Y-%m-%d") if action.created else "-"
    return [
        repo.registry,
        repo.repository,
        action.digest[:19],
        ", ".join(short_tag(t) for t in action.tags) or "-",
        created,
        action.action,
        action.rule,
    ]


def _totals(repo: RepositoryPlan) -> str:
    if repo.error:
        return f"{repo.ref} ({repo.registry}): {repo.error}"
    counts = ", ".join(f"{a} {repo.count(a)}" for a in ("keep", "delete", "untag"))
    through = "" if repo.api == "registry" else f" through {NAMES[repo.api]}"
    line = f"{repo.ref} ({repo.registry}): {counts}{through}"
    return f"{line}; --apply cannot delete here: {repo.blocked}" if repo.blocked else line


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], style: Style) -> str:
    action_column = headers.index("action")

    def paint(column: int, cell: str) -> str:
        if column == action_column:
            tone = {"keep": "good", "delete": "bad", "untag": "warn"}.get(cell.strip())
            return style.paint(cell, tone) if tone else cell
        if column == len(headers) - 1 and headers[-1] == "result":
            return style.status(cell)
        return cell

    return table(
        list(headers),
        [list(r) for r in rows],
        paint=paint,
        paint_header=lambda h: style.paint(h, "heading"),
    )


def _time(value: Any) -> str:
    return str(value.strftime("%Y-%m-%dT%H:%M:%SZ"))
