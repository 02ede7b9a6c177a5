"""`shipit init --from FILE`: an existing pipeline (a GitHub workflow, or a `.gitlab-ci.yml`)
as a shipit.yml that publishes what it published, the pipeline rewritten to run shipit
(written beside the original, which is left untouched), and a report of what was translated,
what was not (with its line) and what changes.

The translations are pure (`github.translate`, `gitlab.translate`: a parsed document and a
report in, plain dicts out); `migrate` reads, checks the spec parses, and writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shipit import spec as spec_mod
from shipit.errors import UsageError
from shipit.migrate import github, gitlab
from shipit.migrate.report import Report
from shipit.migrate.yamlsrc import load

HEADER = (
    "# shipit.yml, written by `shipit init --from {source}`; `shipit plan` shows what a run does.\n"
)


@dataclass(frozen=True, kw_only=True)
class Migration:
    spec_path: Path
    pipeline_path: Path | None
    report: Report

    def text(self) -> str:
        written = [self.spec_path] + ([self.pipeline_path] if self.pipeline_path else [])
        return self.report.text(written)


def beside(source: Path) -> Path:
    """Where the rewritten pipeline goes: `release.yml` -> `release.shipit.yml`."""
    return source.with_name(f"{source.stem}.shipit{source.suffix or '.yml'}")


def dump(document: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(document), sort_keys=False, allow_unicode=True, width=100)


def migrate(
    source: Path, spec_path: Path, env: Mapping[str, str], *, force: bool = False
) -> Migration:
    """Translate `source`, write the spec at `spec_path` and the pipeline beside `source`."""
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--from {source}: {exc.strerror or exc}") from None
    try:
        document = load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"--from {source}: not YAML: {exc}") from None
    if not isinstance(document, dict):
        raise UsageError(f"--from {source}: not a GitHub workflow or a .gitlab-ci.yml")
    if spec_path.exists() and not force:
        raise UsageError(f"{spec_path} already exists", hint="`shipit init --force` writes over it")
    report = Report(source=source)
    jobs = document.get("jobs")
    if isinstance(jobs, dict) and any(isinstance(j, dict) and "steps" in j for j in jobs.values()):
        translation = github.translate(document, report)
        spec, pipeline = translation.spec, translation.workflow
    else:
        spec, pipeline = gitlab.translate(document, report)
    if "image" not in spec and "images" not in spec:
        raise UsageError(
            f"--from {source}: found no image to publish",
            hint="\n".join(f"{n.line or '-'}: {n.text}" for n in report.not_translated) or None,
        )
    spec_text = HEADER.format(source=source.name) + dump(spec)
    spec_mod.parse(spec_text, spec_path, {**_placeholders(spec_text), **env})
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(spec_text, encoding="utf-8")
    pipeline_path = None
    if pipeline is not None:
        pipeline_path = beside(source)
        pipeline_path.write_text(dump(pipeline), encoding="utf-8")
    return Migration(spec_path=spec_path, pipeline_path=pipeline_path, report=report)


def _placeholders(text: str) -> dict[str, str]:
    """Values for the ${VAR}s the spec names, so it can be checked outside CI."""
    import re  # noqa: PLC0415

    return dict.fromkeys(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text), "placeholder")
