"""What every command of the command line shares: its options, their SHIPIT_* variables,
how output is printed, and how `run` and `merge` end.

Options that every command takes (-f, -C, -v, -q, the context overrides) are accepted before
or after the command name; each also comes from a SHIPIT_* variable. Precedence: command
line > SHIPIT_* environment > spec > defaults.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from shipit import app
from shipit.context import EVENTS, Overrides
from shipit.errors import EXIT_FAILED
from shipit.log import COLOR_CHOICES, Console, Style, use_color

F = TypeVar("F", bound=Callable[..., Any])

# name -> (SHIPIT_* variable, converter for the variable's text)
_SHARED: dict[str, tuple[str, Callable[[str], Any]]] = {
    "spec_file": ("SHIPIT_FILE", str),
    "directory": ("SHIPIT_DIRECTORY", str),
    "verbose": ("SHIPIT_VERBOSE", int),
    "quiet": ("SHIPIT_QUIET", lambda t: t.lower() in ("1", "true", "yes")),
    "debug": ("SHIPIT_DEBUG", lambda t: t.lower() in ("1", "true", "yes")),
    "color": ("SHIPIT_COLOR", str),
    "ref": ("SHIPIT_REF", str),
    "event": ("SHIPIT_EVENT", str),
    "sha": ("SHIPIT_SHA", str),
    "pr": ("SHIPIT_PR", int),
    "default_branch": ("SHIPIT_DEFAULT_BRANCH", str),
}


def shared_options(func: F) -> F:
    """The options every command takes, on the group and on each command."""
    options = [
        click.option(
            "-f",
            "--file",
            "spec_file",
            metavar="FILE",
            help="The spec (default shipit.yml, relative to -C).",
        ),
        click.option("-C", "--directory", metavar="DIR", help="Run as if started in DIR."),
        click.option("-v", "--verbose", count=True, help="More detail (repeat for more)."),
        click.option("-q", "--quiet", is_flag=True, default=None, help="Only warnings and errors."),
        click.option("--debug", is_flag=True, default=None, help="Tracebacks for failures."),
        click.option(
            "--color",
            type=click.Choice(COLOR_CHOICES),
            default=None,
            help="Colour: auto (a terminal, or CI; not with NO_COLOR), always, never.",
        ),
        click.option("--ref", metavar="REF", help="Build as if for this ref (refs/tags/v1.2.3)."),
        click.option("--event", type=click.Choice(EVENTS), help="Build as if for this event."),
        click.option("--sha", metavar="SHA", help="The commit to label images with."),
        click.option("--pr", type=int, metavar="N", help="Build as pull request N."),
        click.option("--default-branch", metavar="NAME", help="The repository's default branch."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@dataclass
class State:
    env: Mapping[str, str]


def shared_values(ctx: click.Context) -> dict[str, Any]:
    """Merge shared options: the command's own, then the group's, then SHIPIT_* variables."""
    state: State = ctx.find_object(State) or State(env=os.environ)
    parent = ctx.parent.params if ctx.parent else {}
    merged: dict[str, Any] = {}
    for name, (variable, convert) in _SHARED.items():
        value = ctx.params.get(name)
        if value in (None, 0, False):
            value = parent.get(name)
        if value in (None, 0, False) and state.env.get(variable):
            try:
                value = convert(state.env[variable])
            except ValueError:
                raise click.BadParameter(
                    f"{variable}={state.env[variable]!r} is not valid"
                ) from None
        merged[name] = value
    return merged


def command_options(ctx: click.Context) -> tuple[app.Options, Mapping[str, str], Console]:
    shared = shared_values(ctx)
    state: State = ctx.find_object(State) or State(env=os.environ)
    verbosity = -1 if shared["quiet"] else int(shared["verbose"] or 0)
    console = Console(state.env, verbosity=verbosity, color=shared["color"])
    ctx.meta["debug"] = bool(shared["debug"])
    ctx.meta["color"] = shared["color"]
    options = app.Options(
        directory=Path(shared["directory"] or "."),
        spec_file=shared["spec_file"],
        overrides=Overrides(
            ref=shared["ref"],
            event=shared["event"],
            sha=shared["sha"],
            pr=shared["pr"],
            default_branch=shared["default_branch"],
        ),
    )
    return options, state.env, console


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a cancelled CI job) stops a run the way Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def emit_json(document: Any) -> None:
    """JSON on stdout, never coloured."""
    click.echo(json.dumps(document, indent=2, sort_keys=False), color=False)


def stdout_style(ctx: click.Context, env: Mapping[str, str]) -> Style:
    """Colour for what goes to stdout (tables, results), decided for stdout itself."""
    return Style(use_color(ctx.meta.get("color"), env, sys.stdout))


def echo(text: str, style: Style) -> None:
    click.echo(text, color=style.enabled)


def report_path(options: app.Options, env: Mapping[str, str], report: str | None) -> Path:
    """--report, SHIPIT_REPORT or the default; an older run's report is removed at once, so
    it cannot pass for this one's."""
    path = Path(report or env.get("SHIPIT_REPORT") or options.directory / app.DEFAULT_REPORT)
    app.clear_report(path)
    return path


def finish(
    ctx: click.Context,
    env: Mapping[str, str],
    console: Console,
    result: Any,
    document: Any | None,
    *,
    error: str | None,
    failures: Sequence[str] = (),
) -> int:
    """The end of `run` and `merge`: JSON or the summary on stdout, then what the run said
    (`error`, before any output failure was noted in the result) and each output that could
    not be written; the exit code (1 when only an output failed: the images are published,
    the CI step must still fail)."""
    if document is not None:
        emit_json(document)
    else:
        style = stdout_style(ctx, env)
        echo(app.summary(result, style), style)
    for message in (error, *failures):
        if message:
            console.error(message)
    return int(result.exit_code) or (EXIT_FAILED if failures else 0)
