"""What a migration says: what was translated, what was not (with its line), what changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class Note:
    text: str
    line: int | None = None  # in the source file, 1-based


@dataclass(kw_only=True)
class Report:
    """Filled while translating; rendered once at the end."""

    source: Path
    translated: list[Note] = field(default_factory=list)
    not_translated: list[Note] = field(default_factory=list)
    changes: list[Note] = field(default_factory=list)

    def done(self, text: str, line: int | None = None) -> None:
        self.translated.append(Note(text=text, line=line))

    def missed(self, text: str, line: int | None = None) -> None:
        self.not_translated.append(Note(text=text, line=line))

    def changed(self, text: str, line: int | None = None) -> None:
        if all(n.text != text for n in self.changes):
            self.changes.append(Note(text=text, line=line))

    def text(self, written: list[Path]) -> str:
        lines = [f"shipit init --from {self.source}: wrote {', '.join(map(str, written))}"]
        for title, notes in (
            ("Translated", self.translated),
            ("Not translated", self.not_translated),
            ("What changes", self.changes),
        ):
            lines.append(f"{title}:")
            if not notes:
                lines.append("  (nothing)")
            for note in notes:
                where = f"{self.source.name}:{note.line}: " if note.line else ""
                lines.append(f"  - {where}{note.text}")
        return "\n".join(lines)
