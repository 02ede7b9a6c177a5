"""What a run hands to its CI system: GitHub step outputs and summary, GitLab's dotenv.

GitHub Actions: `version`, `tags` (full refs, one a line), `digest` and `json` (the result
document) go to GITHUB_OUTPUT, each in a heredoc with a random delimiter, so no value can end
its own entry or start another; a Markdown table is appended (never written over) to
GITHUB_STEP_SUMMARY, with every digest each registry holds and whether it is signed and
carries the SLSA provenance attestation. GitLab CI: `shipit.env` (SHIPIT_VERSION,
SHIPIT_DIGEST, SHIPIT_TAGS, SHIPIT_STATUS) in CI_PROJECT_DIR for `artifacts:reports:dotenv`,
one line per variable.

A leg of a distributed build hands on its leg document instead: in GitHub Actions as the
outputs `leg` and `json` (with `version`, `digest` of its platform manifest, and `tags`
empty), in GitLab CI as the file `shipit-legs/IMAGE-PLATFORM.json` (one name per leg, so the
artifacts of every leg fit side by side in the merge job) and, in `shipit.env`, a variable
`SHIPIT_LEG_IMAGE_PLATFORM` holding its digest (a name per leg: a merge job that `needs:`
every leg gets all of them).

An output that cannot be written (no such folder, read-only, a folder in its place) is an
`OutputFailure` naming the file and the variable that chose it, never an exception: the
run's images are already published by then, and the caller says so and still writes the
report.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shipit.execute import RunResult
from shipit.legs import Leg
from shipit.report import document, write_json

DOTENV = "shipit.env"
LEGS_FOLDER = "shipit-legs"
_SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN")


def outputs(result: RunResult) -> dict[str, str]:
    """The four outputs: version, tags (pushed refs, one a line), digest, json."""
    doc = document(result)
    refs = [ref["ref"] for image in doc["images"] for ref in image["refs"] if ref["pushed"]]
    digests = [ref["digest"] for image in doc["images"] for ref in image["refs"] if ref["digest"]]
    return {
        "version": result.version or "",
        "tags": "\n".join(refs),
        "digest": digests[0] if digests else "",
        "json": json.dumps(doc, separators=(",", ":")),
    }


@dataclass(frozen=True, kw_only=True)
class OutputFailure:
    """A CI output that could not be written: which file, named by which variable, and why."""

    path: str
    variable: str  # GITHUB_OUTPUT, GITHUB_STEP_SUMMARY, CI_PROJECT_DIR (or -C for the dotenv)
    reason: str

    def __str__(self) -> str:
        return f"cannot write the CI output {self.path} (from {self.variable}): {self.reason}"


def write(result: RunResult, env: Mapping[str, str], directory: Path) -> list[OutputFailure]:
    """The outputs of the CI system shipit runs in (none outside CI); what could not be written."""
    failures = []
    if env.get("GITHUB_ACTIONS") == "true":
        failures += write_github(result, env)
    if env.get("GITLAB_CI") == "true":
        where, variable = gitlab_folder(env, directory)
        failure = write_gitlab(result, where, variable=variable)
        failures += [failure] if isinstance(failure, OutputFailure) else []
    return failures


def gitlab_folder(env: Mapping[str, str], directory: Path) -> tuple[Path, str]:
    """Where GitLab's outputs go, and the variable that chose it: CI_PROJECT_DIR, else -C."""
    project_dir = env.get("CI_PROJECT_DIR")
    return (Path(project_dir), "CI_PROJECT_DIR") if project_dir else (directory, "-C")


def write_github(result: RunResult, env: Mapping[str, str]) -> list[OutputFailure]:
    """Append the step outputs and the summary; a file that cannot be written is reported."""
    return _append_github(env, outputs(result), lambda: markdown_summary(result))


def _append_github(
    env: Mapping[str, str], values: Mapping[str, str], summary: Callable[[], str]
) -> list[OutputFailure]:
    """`values` appended to GITHUB_OUTPUT and `summary()` to GITHUB_STEP_SUMMARY, each when
    its variable is set; the files that could not be written."""
    failures = []
    output = env.get("GITHUB_OUTPUT")
    if output:
        text = "".join(github_output(name, value) for name, value in values.items())
        failures.append(_append(output, "GITHUB_OUTPUT", text))
    step_summary = env.get("GITHUB_STEP_SUMMARY")
    if step_summary:
        failures.append(_append(step_summary, "GITHUB_STEP_SUMMARY", summary()))
    return [f for f in failures if f is not None]


def _append(path: str, variable: str, text: str) -> OutputFailure | None:
    try:
        with Path(path).open("a", encoding="utf-8") as handle:
            handle.write(text)
    except (OSError, ValueError) as exc:  # no such folder, read-only, a folder in its place
        return OutputFailure(path=path, variable=variable, reason=_reason(exc))
    return None


def _reason(exc: Exception) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def github_output(name: str, value: str) -> str:
    """One output as a heredoc whose delimiter appears nowhere in the value."""
    while True:
        delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
        if delimiter not in value:
            return f"{name}<<{delimiter}\n{value}\n{delimiter}\n"


def write_gitlab(
    result: RunResult, directory: Path, *, variable: str = "CI_PROJECT_DIR"
) -> Path | OutputFailure:
    """`shipit.env` in `directory` (named by `variable`), or why it could not be written."""
    values = outputs(result)
    lines = {
        "SHIPIT_VERSION": values["version"],
        "SHIPIT_DIGEST": values["digest"],
        "SHIPIT_TAGS": ",".join(values["tags"].splitlines()),
        "SHIPIT_STATUS": result.status,
    }
    path = directory / DOTENV
    text = "".join(f"{key}={_one_line(value)}\n" for key, value in lines.items())
    try:
        path.write_text(text, encoding="utf-8")
    except (OSError, ValueError) as exc:
        return OutputFailure(path=str(path), variable=variable, reason=_reason(exc))
    return path


def markdown_summary(result: RunResult) -> str:
    doc = document(result)
    lines = [
        f"### shipit: {_escape(doc['status'])}, version `{_escape(doc['version'] or '-')}`",
        "",
    ]
    lines += ["| image | registry | tags | digest | signed |", "| --- | --- | --- | --- | --- |"]
    for image in doc["images"]:
        lines.extend(_image_rows(image))
    lines.extend(_digest_rows(doc["images"]))
    for image in doc["images"]:
        platforms = [
            p for p in image.get("platforms") or [] if p.get("platform") and p.get("digest")
        ]
        if len(platforms) > 1:
            shown = ", ".join(
                f"{_escape(p['platform'])} `{_escape(p['digest'][:19])}`" for p in platforms
            )
            lines.append(
                f"\nPlatforms of `{_escape(image['name'])}` (index"
                f" `{_escape(str(image.get('digest'))[:19])}`): {shown}."
            )
    for image in doc["images"]:
        scan = image.get("scan")
        if scan:
            counts = ", ".join(f"{s} {scan['counts'].get(s, 0)}" for s in _SEVERITIES)
            verdict = "blocked the release" if scan["blocked"] else "passed"
            lines.append(f"\nScan of `{_escape(image['name'])}`: {counts}; the gate {verdict}.")
    if doc.get("error"):
        lines.append(f"\n**Error:** {_escape(doc['error'])}")
    return "\n".join(lines) + "\n\n"


def _image_rows(image: Mapping[str, Any]) -> list[str]:
    by_registry: dict[str, list[Mapping[str, Any]]] = {}
    for ref in image["refs"]:
        by_registry.setdefault(ref["registry"], []).append(ref)
    if not by_registry:
        return [f"| {_escape(image['name'])} | - | - | - | {image['status']} |"]
    rows = []
    for registry, refs in by_registry.items():
        tags = ", ".join(
            f"`{_escape(r['ref'].rpartition(':')[2])}`" + ("" if r["pushed"] else " (failed)")
            for r in refs
        )
        digest = next((r["digest"] for r in refs if r["digest"]), None)
        signed = "yes" if refs and all(r["signed"] for r in refs) else "no"
        shown = f"`{digest[:19]}`" if digest else "-"
        rows.append(
            f"| {_escape(image['name'])} | {_escape(registry)} | {tags} | {shown} | {signed} |"
        )
    return rows


def _digest_rows(images: Any) -> list[str]:
    """Every stored digest per registry: signed, and attested (the SLSA provenance)."""
    rows = []
    for image in images:
        for registry in image.get("registries", []):
            for manifest in registry.get("manifests", []):
                signed = "yes" if manifest.get("signed") else "no"
                attested = "yes" if manifest.get("attested") else "no"
                rows.append(
                    f"| {_escape(image['name'])} | {_escape(registry['registry'])}"
                    f" | `{_escape(manifest['digest'])}` | {signed} | {attested} |"
                )
    if not rows:
        return []
    header = ["", "| image | registry | digest | signed | provenance |"]
    return [*header, "| --- | --- | --- | --- | --- |", *rows]


def _escape(text: str) -> str:
    """Text for a Markdown table cell: no pipes, no newlines, no HTML."""
    return (
        str(text)
        .replace("\\", "\\\\")
        .replace("|", "\\|")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace("\r", " ")
        .replace("\n", " ")
    )


def _one_line(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ")


def leg_outputs(leg: Leg) -> dict[str, str]:
    text = json.dumps(leg.to_json(), separators=(",", ":"))
    return {
        "version": leg.version,
        "tags": "",
        "digest": leg.digest or "",
        "json": text,
        "leg": text,
    }


def write_leg_github(leg: Leg, env: Mapping[str, str]) -> list[OutputFailure]:
    """Append the leg's step outputs and summary; a file that cannot be written is reported."""

    def summary() -> str:
        where = ", ".join(_escape(t.registry) for t in leg.registries if t.digest) or "nowhere"
        return (
            f"### shipit leg: `{_escape(leg.image)}` {_escape(leg.platform)}, {leg.status}\n\n"
            f"Version `{_escape(leg.version)}`, manifest `{leg.digest or '-'}` stored by"
            f" digest in {where}; no tag and no signature until `shipit merge`.\n\n"
        )

    return _append_github(env, leg_outputs(leg), summary)


def leg_file_name(leg: Leg) -> str:
    """`IMAGE-PLATFORM.json`, the leg's file in the shipit-legs folder."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{leg.image}-{leg.platform}") + ".json"


def write_leg_gitlab(
    leg: Leg, directory: Path, *, variable: str = "CI_PROJECT_DIR"
) -> Path | OutputFailure:
    """The leg's file in `directory`/shipit-legs, and its variable in `directory`/shipit.env;
    or why they could not be written."""
    path = directory / LEGS_FOLDER / leg_file_name(leg)
    name = "SHIPIT_LEG_" + re.sub(r"[^A-Z0-9]+", "_", f"{leg.image}_{leg.platform}".upper())
    try:
        write_json(path, leg.to_json())
        (directory / DOTENV).write_text(f"{name}={leg.digest or ''}\n", encoding="utf-8")
    except (OSError, ValueError) as exc:
        return OutputFailure(path=str(path), variable=variable, reason=_reason(exc))
    return path
