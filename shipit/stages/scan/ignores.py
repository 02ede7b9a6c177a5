"""Ignore files, read the way Trivy reads them, so shipit can apply them itself.

`.trivyignore` holds an id a line with an optional `exp:YYYY-MM-DD`; `.trivyignore.yaml`
(or `.yml`) holds sections of entries with `paths`, `purls`, `expired_at` and `statement`.
An entry whose date has passed no longer applies, and shipit says so. `suppression_file`
goes the other way: the YAML ignore file that makes `trivy convert` suppress exactly the
findings shipit dropped.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

import yaml

from shipit import log
from shipit.errors import UsageError
from shipit.spec import ScanPolicy
from shipit.stages.scan.findings import KINDS, Detected
from shipit.stages.scan.matching import glob_escape, glob_match, parse_purl, purl_match

_log = log.get(__name__)


@dataclass(frozen=True, kw_only=True)
class IgnoreEntry:
    """One entry of a .trivyignore or .trivyignore.yaml, with Trivy's matching rules."""

    id: str
    kinds: frozenset[str]  # the kinds of finding it applies to
    where: str  # FILE:LINE (plain) or FILE: section[N] (YAML), for messages
    paths: tuple[str, ...] = ()  # doublestar patterns; none = every path
    purls: tuple[str, ...] = ()  # package URLs; none = every package
    expires: datetime | None = None  # Trivy: no longer applies once this moment has passed
    statement: str = ""

    def expired(self, now: datetime) -> bool:
        return self.expires is not None and self.expires < now

    def matches(self, detected: Detected) -> bool:
        if detected.finding.kind not in self.kinds or self.id not in detected.ids:
            return False
        if self.paths and not any(
            glob_match(pattern, path) for pattern in self.paths for path in detected.paths
        ):
            return False
        return not (self.purls and detected.purl) or any(
            purl_match(p, detected.purl) for p in self.purls
        )


@dataclass(frozen=True, kw_only=True)
class IgnoreRules:
    path: Path | None = None
    entries: tuple[IgnoreEntry, ...] = ()
    problems: tuple[str, ...] = ()  # entries that can never apply, said as warnings

    def active(self, now: datetime) -> tuple[IgnoreEntry, ...]:
        return tuple(e for e in self.entries if not e.expired(now))

    def expired(self, now: datetime) -> tuple[IgnoreEntry, ...]:
        return tuple(e for e in self.entries if e.expired(now))

    def match(self, detected: Detected, now: datetime) -> IgnoreEntry | None:
        return next((e for e in self.active(now) if e.matches(detected)), None)


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_YAML_SECTIONS: Final = {
    "vulnerabilities": "vuln",
    "secrets": "secret",
    "misconfigurations": "misconfig",
    "licenses": "license",
}


def load_ignorefile(path: Path) -> IgnoreRules:
    """Parse an ignore file the way Trivy does: YAML by extension, else one id a line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(
            f"scan.ignorefile {path}: {exc.strerror or exc}",
            hint="create the file, or remove scan.ignorefile from the spec",
        ) from None
    if path.suffix in (".yaml", ".yml"):
        return parse_yaml_ignores(text, path)
    return parse_plain_ignores(text, path)


def parse_plain_ignores(text: str, path: Path) -> IgnoreRules:
    """`.trivyignore`: an id per line, `#` comments, an optional `exp:YYYY-MM-DD` field.

    As in Trivy, an id applies to every kind of finding, and a line whose date cannot be
    read is skipped whole (it ignores nothing; shipit says so).
    """
    entries: list[IgnoreEntry] = []
    problems: list[str] = []
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        where = f"{path}:{number}"
        exp = next((f.removeprefix("exp:") for f in fields[1:] if f.startswith("exp:")), None)
        expires = None
        if exp is not None:
            expires = _plain_date(exp)
            if expires is None:
                problems.append(f"{where}: exp:{exp} is not a YYYY-MM-DD date; entry skipped")
                continue
        entries.append(
            IgnoreEntry(id=fields[0], kinds=frozenset(KINDS), where=where, expires=expires)
        )
    return IgnoreRules(path=path, entries=tuple(entries), problems=tuple(problems))


def _plain_date(text: str) -> datetime | None:
    if not _DATE.fullmatch(text):
        return None
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return None
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def parse_yaml_ignores(text: str, path: Path) -> IgnoreRules:
    """`.trivyignore.yaml`: `vulnerabilities`, `secrets`, `misconfigurations`, `licenses`,
    each a list of `{id, paths?, purls?, expired_at?, statement?}`."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"scan.ignorefile {path}: not valid YAML: {exc}") from None
    if data is None:
        return IgnoreRules(path=path)
    if not isinstance(data, Mapping):
        raise UsageError(f"scan.ignorefile {path}: expected a mapping of sections")
    entries: list[IgnoreEntry] = []
    problems: list[str] = []
    for section, items in data.items():
        kind = _YAML_SECTIONS.get(str(section))
        if kind is None:
            problems.append(f"{path}: unknown section '{section}' ignores nothing")
            continue
        if items is None:
            continue
        if not isinstance(items, list):
            raise UsageError(f"scan.ignorefile {path}: '{section}' must be a list of entries")
        for index, item in enumerate(items, start=1):
            where = f"{path}: {section}[{index}]"
            entry = _yaml_entry(item, kind, where)
            if entry is None:
                problems.append(f"{where} has no id, so it ignores nothing (Trivy needs one)")
            else:
                entries.append(entry)
    return IgnoreRules(path=path, entries=tuple(entries), problems=tuple(problems))


def _yaml_entry(item: object, kind: str, where: str) -> IgnoreEntry | None:
    if not isinstance(item, Mapping):
        raise UsageError(f"scan.ignorefile {where}: expected a mapping with an id")
    entry_id = item.get("id")
    if entry_id is None or str(entry_id).strip() == "":
        return None
    purls = _string_list(item.get("purls"), where, "purls")
    for text in purls:
        if parse_purl(text) is None:
            raise UsageError(f"scan.ignorefile {where}: '{text}' is not a package URL (pkg:...)")
    return IgnoreEntry(
        id=str(entry_id),
        kinds=frozenset({kind}),
        where=where,
        paths=_string_list(item.get("paths"), where, "paths"),
        purls=purls,
        expires=_yaml_time(item.get("expired_at"), where),
        statement=str(item.get("statement") or ""),
    )


def _string_list(value: object, where: str, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"scan.ignorefile {where}: '{key}' must be a list of strings")
    return tuple(value)


def _yaml_time(value: object, where: str) -> datetime | None:
    """`expired_at`: a date (midnight UTC, as Go reads it) or a date and time."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    raise UsageError(f"scan.ignorefile {where}: expired_at '{value}' is not a date (YYYY-MM-DD)")


def policy_ignores(policy: ScanPolicy) -> IgnoreRules:
    """The rules of the policy's ignore file; none when there is none (or it went away and
    the spec never named it)."""
    path = policy.ignorefile
    if path is None:
        return IgnoreRules()
    if not path.is_file():
        if policy.ignorefile_explicit:
            raise UsageError(
                f"scan.ignorefile {path} does not exist",
                hint="create it, or remove scan.ignorefile from the spec",
            )
        _log.debug("%s went away; scanning without it", path)
        return IgnoreRules()
    return load_ignorefile(path)


def warn_about_ignores(rules: IgnoreRules, now: datetime) -> None:
    """Say which entries can never apply and which have expired."""
    for problem in rules.problems:
        _log.warning("%s", problem)
    for entry in rules.expired(now):
        day = entry.expires.date().isoformat() if entry.expires else "?"
        _log.warning(
            "ignore entry %s (%s) expired on %s and no longer applies", entry.id, entry.where, day
        )


def suppression_file(dropped: Sequence[tuple[Detected, str]]) -> dict[str, list[dict[str, Any]]]:
    """A .trivyignore.yaml that makes Trivy suppress exactly `dropped` (for `trivy convert`).

    Each entry names its finding by id and by package URL (or by path), so one unfixed CVE
    is never taken for a fixed one of the same id elsewhere in the image.
    """
    sections: dict[str, list[dict[str, Any]]] = {name: [] for name in _YAML_SECTIONS}
    section_of = {kind: name for name, kind in _YAML_SECTIONS.items()}
    for item, why in dropped:
        entry: dict[str, Any] = {"id": item.finding.id, "statement": why}
        if item.purl:
            entry["purls"] = [item.purl]
        elif item.paths:
            entry["paths"] = [glob_escape(item.paths[0])]
        sections[section_of[item.finding.kind]].append(entry)
    return {name: entries for name, entries in sections.items() if entries}
