"""Logging for people and CI: progress on stderr, CI fold groups, annotations, colour, masking.

Humans read progress on stderr; stdout carries only a command's result (a table, refs,
JSON). Every handler masks the values of known secrets, so a password that reaches a
message by accident still never reaches a log. Colour (click's ANSI styling) is for stage
headings, pass/fail words, severities and the summary table; `use_color` decides it once.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Final, TextIO

import click

LOGGER = "shipit"
_MASK = "********"
_MIN_SECRET = 4  # shorter values would mask ordinary words


class MaskingFilter(logging.Filter):
    """Replaces every registered secret value in a record's final message."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None

    def add(self, secret: str | None) -> None:
        if not secret or len(secret) < _MIN_SECRET or secret in self._secrets:
            return
        self._secrets.add(secret)
        ordered = sorted(self._secrets, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def mask(self, text: str) -> str:
        return self._pattern.sub(_MASK, text) if self._pattern else text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._pattern is not None:
            record.msg = self.mask(record.getMessage())
            record.args = None
        return True


class _CiFormatter(logging.Formatter):
    """Plain lines; warnings and errors as annotations when running in GitHub Actions."""

    def __init__(self, provider: str) -> None:
        super().__init__("%(message)s")
        self.provider = provider

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.provider == "github" and record.levelno >= logging.WARNING:
            kind = "error" if record.levelno >= logging.ERROR else "warning"
            return f"::{kind}::{escape_github(text)}"
        if record.levelno >= logging.ERROR:
            return f"error: {text}"
        if record.levelno >= logging.WARNING:
            return f"warning: {text}"
        return text


class _ConsoleHandler(logging.Handler):
    """Log records go through the console, so they too keep clear of a live progress line."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.write(self.format(record))
        except Exception:  # logging must never end a run
            self.handleError(record)


def escape_github(text: str) -> str:
    """Escape a workflow command's message so a value cannot start a command of its own."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`1 layer`, `3 layers`, `0 registries` (`plural` for nouns that do not just take -s)."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def ci_provider(env: Mapping[str, str]) -> str:
    if env.get("GITHUB_ACTIONS") == "true":
        return "github"
    if env.get("GITLAB_CI") == "true":
        return "gitlab"
    return "local"


COLOR_CHOICES: Final = ("auto", "always", "never")


def use_color(choice: str | None, env: Mapping[str, str], stream: TextIO) -> bool:
    """Whether output gets colour: `--color always|never`, else auto.

    auto: no colour when NO_COLOR is set (no-color.org); colour when FORCE_COLOR is set to
    anything but 0, in GitHub Actions and GitLab CI (both render ANSI in their job logs), or
    when the stream is a terminal.
    """
    if choice == "always":
        return True
    if choice == "never" or env.get("NO_COLOR"):
        return False
    if env.get("FORCE_COLOR", "0") not in ("", "0"):
        return True
    if ci_provider(env) != "local":
        return True
    return _isatty(stream)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


# The meaning of a word, and its colour (click.style keywords).
_TONES: Final[Mapping[str, Mapping[str, object]]] = {
    "heading": {"fg": "cyan", "bold": True},
    "good": {"fg": "green"},
    "bad": {"fg": "red", "bold": True},
    "warn": {"fg": "yellow"},
    "dim": {"dim": True},
    "CRITICAL": {"fg": "red", "bold": True},
    "HIGH": {"fg": "red"},
    "MEDIUM": {"fg": "yellow"},
    "LOW": {"fg": "blue"},
    "UNKNOWN": {"dim": True},
}
_GOOD_WORDS: Final = frozenset({"ok", "success", "signed", "pushed", "verified", "built", "passed"})
_BAD_WORDS: Final = frozenset({"failed", "blocked", "interrupted", "FAILED", "BLOCKED"})


class Style:
    """Paints text with ANSI colour when enabled, and leaves it alone otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def paint(self, text: str, tone: str) -> str:
        if not self.enabled or not text or tone not in _TONES:
            return text
        return click.style(text, **_TONES[tone])  # type: ignore[arg-type]

    def status(self, text: str) -> str:
        """A status cell or word (`signed`, `failed: ...`, `partial (1/2)`), coloured by meaning."""
        word = re.split(r"[\s:(]", text, maxsplit=1)[0]
        if word in _GOOD_WORDS:
            return self.paint(text, "good")
        if word in _BAD_WORDS:
            return self.paint(text, "bad")
        if word in ("partial", "skipped", "not"):
            return self.paint(text, "warn")
        return text

    def severity(self, text: str, severity: str) -> str:
        return self.paint(text, severity.upper())


PLAIN: Final = Style(enabled=False)


class Console:
    """The run's output channel: the masking filter, CI groups, colour, and the stderr stream."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        verbosity: int = 0,
        stream: TextIO | None = None,
        color: str | None = None,
    ) -> None:
        self.provider = ci_provider(env)
        self.stream = stream or sys.stderr
        self.masking = MaskingFilter()
        self.verbosity = verbosity
        self.style = Style(use_color(color, env, self.stream))
        self._lock = threading.Lock()
        self._live: str | None = None
        # a terminal outside CI gets a live progress line; logs get plain lines instead
        self.interactive = self.provider == "local" and _isatty(self.stream)
        self._group = 0
        logger = logging.getLogger(LOGGER)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        handler = _ConsoleHandler(self)
        handler.setFormatter(_CiFormatter(self.provider))
        handler.addFilter(self.masking)
        logger.addHandler(handler)
        logger.propagate = False
        level = (
            logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
        )
        logger.setLevel(level)

    def secret(self, value: str | None) -> None:
        """Register a value that must never be shown."""
        self.masking.add(value)

    def warn(self, text: str) -> None:
        self._annotated("warning", text)

    def error(self, text: str) -> None:
        self._annotated("error", text)

    def _annotated(self, kind: str, text: str) -> None:
        if self.provider == "github":  # a workflow command: never coloured
            self.write(f"::{kind}::{escape_github(text)}")
        else:
            self.write(f"{self.style.paint(kind, 'bad' if kind == 'error' else 'warn')}: {text}")

    def write(self, text: str) -> None:
        """One line; a live progress line, if one is shown, stays below it."""
        with self._lock:
            clear = "\r\x1b[K" if self._live is not None else ""
            self.stream.write(clear + self.masking.mask(text) + "\n")
            if self._live is not None:
                self.stream.write(self._live)
            self.stream.flush()

    def live(self, text: str | None) -> None:
        """Draw `text` as the one line that updates in place (a terminal only); None removes it."""
        if not self.interactive:
            return
        with self._lock:
            width = shutil.get_terminal_size().columns - 1  # a wrapped line cannot be redrawn
            shown = None if text is None else self.masking.mask(text)[:width]
            self.stream.write("\r\x1b[K" + (shown or ""))
            self.stream.flush()
            self._live = shown

    @contextlib.contextmanager
    def group(self, title: str) -> Iterator[None]:
        """A collapsible section of the log in CI, a heading elsewhere."""
        self._group += 1
        name = f"shipit_{self._group}"
        if self.provider == "github":
            self.write(f"::group::{escape_github(title)}")
        elif self.provider == "gitlab":
            heading = self.style.paint(title, "heading")
            self.write(
                f"\x1b[0Ksection_start:{int(time.time())}:{name}[collapsed=true]\r\x1b[0K{heading}"
            )
        elif self.verbosity >= 0:
            self.write(self.style.paint(f"==> {title}", "heading"))
        try:
            yield
        finally:
            if self.provider == "github":
                self.write("::endgroup::")
            elif self.provider == "gitlab":
                self.write(f"\x1b[0Ksection_end:{int(time.time())}:{name}\r\x1b[0K")


def get(name: str) -> logging.Logger:
    """A child of shipit's logger, for a module: `log.get(__name__)`."""
    return logging.getLogger(name if name.startswith(LOGGER) else f"{LOGGER}.{name}")
