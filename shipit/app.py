"""The core API behind the command line: options in, spec / context / plan out.

`shipit.cli` parses arguments into `Options` and calls these; tests and other programs can
call them directly.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shipit import context as context_mod
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
    return spec_mod.load(options.spec_path, env)


def load_context(options: Options, env: Mapping[str, str], spec: Spec) -> Context:
    return context_mod.gather(spec.root, env, options.overrides)


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


def schema_text() -> str:
    """The JSON Schema of the spec, as shipped in the package."""
    text = resources.files("shipit").joinpath("schema.json").read_text(encoding="utf-8")
    json.loads(text)  # a broken schema file is a packaging bug; fail loudly here
    return text
