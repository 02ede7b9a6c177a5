"""The core API behind the command line: options in, spec / context / plan out.

`shipit.cli` parses arguments into `Options` and calls these; tests and other programs can
call them directly.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipit import containers_config, gather
from shipit import spec as spec_mod
from shipit.context import Context, Overrides
from shipit.errors import UsageError
from shipit.log import PLAIN, Console, Style
from shipit.plan import Plan, make_plan
from shipit.spec import Spec
from shipit.spec.paths import PathProblem, kind, shown
from shipit.spec.paths import check as check_path

if TYPE_CHECKING:
    from shipit.execute import RunResult
    from shipit.legs import Leg
    from shipit.lifecycle.limit import DeleteLimit
    from shipit.lifecycle.promote import PromoteResult
    from shipit.lifecycle.prune import PruneResult
    from shipit.lifecycle.records import PrunePlan

DEFAULT_SPEC = "shipit.yml"
DEFAULT_REPORT = "shipit-report.json"


@dataclass(frozen=True, kw_only=True)
class Options:
    """What every command shares: where the spec is, and how to read the build context."""

    directory: Path = Path()
    spec_file: str | None = None
    overrides: Overrides = field(default_factory=Overrides)

    @property
    def spec_path(self) -> Path:
        """-f is taken relative to -C, as `make -C dir -f file` and `git -C` do."""
        return self.directory / (self.spec_file or DEFAULT_SPEC)


def load_spec(options: Options, env: Mapping[str, str]) -> Spec:
    try:
        check_path(str(options.directory))
        is_folder = kind(options.directory) == "folder"
    except PathProblem as exc:
        raise UsageError(f"-C {shown(str(options.directory))} {exc}") from None
    if not is_folder:
        raise UsageError(f"-C {options.directory}: no such folder")
    # a registry that registries.conf marks insecure is as if the spec said `insecure: true`
    return containers_config.with_insecure(spec_mod.load(options.spec_path, env), env)


def load_context(options: Options, env: Mapping[str, str], spec: Spec) -> Context:
    return gather.gather(spec.root, env, options.overrides)


def plan(
    options: Options,
    env: Mapping[str, str],
    *,
    skip: Collection[str] = (),
    push: bool = True,
    only: str | None = None,
) -> Plan:
    spec = load_spec(options, env)
    ctx = load_context(options, env, spec)
    return make_plan(spec, ctx, skip=skip, push=push, only=only)


def run(plan: Plan, env: Mapping[str, str], console: Console) -> RunResult:
    """Execute the plan: build, scan, push, sign."""
    from shipit.execute import execute  # noqa: PLC0415 (keeps the Docker SDK out of `plan`)

    return execute(plan, env, console)


def leg_plan(plan: Plan, *, platform: str, record: bool) -> Plan:
    """`plan` as one leg of a distributed build: one image, one platform (section 9)."""
    from shipit import legs  # noqa: PLC0415

    return legs.leg_plan(plan, platform=platform, record=record)


def merge(
    plan: Plan, leg_files: Sequence[Path], env: Mapping[str, str], console: Console
) -> RunResult:
    """Join the legs in `leg_files` (files or folders; none: the registries' leg records)
    into one index per image, sign it and tag it."""
    from shipit.execute.merge import merge as merge_legs  # noqa: PLC0415

    legs = read_legs(leg_files, console) if leg_files else None
    return merge_legs(plan, legs, env, console)


def read_legs(paths: Sequence[Path], console: Console) -> list[Leg]:
    """The leg documents in `paths`: each file named, and each `*.json` leg document in each
    folder named (other JSON files in a folder are passed over). Bad input exits 2."""
    from shipit import legs  # noqa: PLC0415

    found = []
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*.json")):
                document = _read_json(child)
                if legs.is_leg_document(document):
                    found.append(_leg(child, document))
                else:
                    console.write(f"{child}: not a leg document, passed over")
        elif path.is_file():
            found.append(_leg(path, _read_json(path)))
        else:
            raise UsageError(
                f"{path}: no such file or folder (a leg document, or a folder of them)"
            )
    if not found:
        where = ", ".join(str(p) for p in paths)
        raise UsageError(f"no leg document in {where}")
    return found


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable JSON document: {exc}") from None


def _leg(path: Path, document: Any) -> Leg:
    from shipit.legs import Leg  # noqa: PLC0415

    try:
        return Leg.from_json(document, str(path))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def write_leg(path: Path, plan: Plan, result: RunResult) -> Leg | None:
    """The leg document of a leg run, written to `path` (the report's place); None when the
    run built no image (its one image is skipped for this ref)."""
    from shipit import report  # noqa: PLC0415
    from shipit.execute.leg import leg_of  # noqa: PLC0415

    images = [i for i in result.images if i.name in {p.name for p in plan.images if p.leg}]
    if not images:
        report.write(path, result)
        return None
    leg = leg_of(plan, images[0], result.status)
    report.write_json(path, leg.to_json())
    return leg


def write_leg_ci_outputs(leg: Leg, env: Mapping[str, str], *, directory: Path) -> tuple[str, ...]:
    """A leg's document as CI outputs (GitHub step outputs, or GitLab's shipit-legs file);
    what could not be written, as messages."""
    from shipit import ci_outputs  # noqa: PLC0415

    failures: list[ci_outputs.OutputFailure] = []
    if env.get("GITHUB_ACTIONS") == "true":
        failures += ci_outputs.write_leg_github(leg, env)
    if env.get("GITLAB_CI") == "true":
        where, variable = ci_outputs.gitlab_folder(env, directory)
        written = ci_outputs.write_leg_gitlab(leg, where, variable=variable)
        failures += [written] if isinstance(written, ci_outputs.OutputFailure) else []
    return tuple(str(f) for f in failures)


def result_document(result: RunResult) -> dict[str, Any]:
    from shipit import report  # noqa: PLC0415

    return report.document(result)


def write_report(path: Path, result: RunResult) -> None:
    from shipit import report  # noqa: PLC0415

    report.write(path, result)


def leave_behind(
    result: RunResult, env: Mapping[str, str], *, report: Path, directory: Path
) -> tuple[RunResult, tuple[str, ...]]:
    """Write the CI outputs, then the report; what could not be written, as messages.

    A CI output that fails is noted in the report's `error`; its `status` stays what the
    run was. The result returned is the one the report holds.
    """
    from shipit import ci_outputs  # noqa: PLC0415

    failures = [str(f) for f in ci_outputs.write(result, env, directory)]
    if failures:
        note = "; ".join(failures)
        result = replace(result, error=f"{result.error}; {note}" if result.error else note)
    try:
        write_report(report, result)
    except (OSError, ValueError) as exc:
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        failures.append(f"cannot write the report {report}: {reason}")
    return result, tuple(failures)


def clear_report(path: Path) -> None:
    """Remove an older run's report: it must not pass for this one's (before anything runs)."""
    try:
        path.unlink(missing_ok=True)
    except (OSError, ValueError) as exc:
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        raise UsageError(f"cannot replace the report {path}: {reason}") from None


def summary(result: RunResult, style: Style = PLAIN) -> str:
    from shipit import report  # noqa: PLC0415

    return report.summary(result, style)


def tags_document(plan: Plan) -> dict[str, Any]:
    """`shipit tags --json`: the version and, per image built, its tags and full refs."""
    return {
        "version": plan.version,
        "images": [
            {"name": i.name, "version": i.version.text, "tags": list(i.tags), "refs": list(i.refs)}
            for i in plan.active()
        ],
    }


def prune_plan(
    options: Options, env: Mapping[str, str], console: Console, *, only: str | None = None
) -> PrunePlan:
    """`shipit prune` without --apply: read every repository and decide; nothing changes."""
    from shipit.lifecycle import prune  # noqa: PLC0415 (keeps the registry client out of `plan`)
    from shipit.tags import template_values  # noqa: PLC0415

    spec = load_spec(options, env)
    ctx = load_context(options, env, spec)
    planned = make_plan(spec, ctx, only=only)
    clients = prune.Clients(env, console)
    try:
        return prune.make_plan(
            spec, planned, lambda i: template_values(ctx, i.version, i.name), clients, console
        )
    finally:
        clients.close()


def read_prune_plan(path: Path) -> PrunePlan:
    """A plan saved with `shipit prune --json > FILE`."""
    from shipit.lifecycle.records import PrunePlan  # noqa: PLC0415

    try:
        return PrunePlan.from_json(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise UsageError(
            f"no plan at {path}", hint="save one with `shipit prune --json > FILE`"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path} is not a prune plan: {exc}") from None


def prune_apply(
    options: Options,
    env: Mapping[str, str],
    console: Console,
    plan: PrunePlan,
    limit: DeleteLimit,
) -> PruneResult:
    """Carry out a prune plan in every registry it names, unless it deletes past `limit`."""
    from shipit.lifecycle import prune  # noqa: PLC0415

    spec = load_spec(options, env)
    clients = prune.Clients(env, console)
    try:
        return prune.apply(spec, plan, clients, console, limit)
    finally:
        clients.close()


def promote(
    options: Options,
    env: Mapping[str, str],
    console: Console,
    *,
    ref: str,
    to: Collection[str],
    tags: Collection[str],
    allow_unsigned: bool,
) -> PromoteResult:
    """Copy a published image with its signatures to other registries (`shipit promote`)."""
    from shipit.lifecycle import promote as promote_mod  # noqa: PLC0415

    spec = load_spec(options, env)
    return promote_mod.promote(
        spec, ref, to=list(to), tags=list(tags), env=env, console=console,
        allow_unsigned=allow_unsigned,
    )  # fmt: skip


def schema_text() -> str:
    """The JSON Schema of the spec, as shipped in the package."""
    text = resources.files("shipit").joinpath("schema.json").read_text(encoding="utf-8")
    json.loads(text)  # a broken schema file is a packaging bug; fail loudly here
    return text
