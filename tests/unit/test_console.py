"""What a person sees: colour only where it can be seen, aligned tables, counted nouns, help."""

from __future__ import annotations

import io
import re

import click
import pytest

from shipit.cli import cli
from shipit.log import Console, Style, counted, use_color
from shipit.render import table

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("choice", "env", "tty", "expected"),
    [
        ("always", {}, False, True),
        ("never", {"FORCE_COLOR": "1"}, True, False),
        ("auto", {}, True, True),
        ("auto", {}, False, False),
        (None, {}, True, True),
        ("auto", {"NO_COLOR": "1"}, True, False),
        ("auto", {"FORCE_COLOR": "1"}, False, True),
        ("auto", {"FORCE_COLOR": "0"}, False, False),
        ("auto", {"GITHUB_ACTIONS": "true"}, False, True),
        ("auto", {"GITLAB_CI": "true"}, False, True),
        ("auto", {"GITHUB_ACTIONS": "true", "NO_COLOR": "1"}, False, False),
    ],
)
def test_colour_is_decided_from_the_choice_the_environment_and_the_terminal(
    choice: str | None, env: dict[str, str], tty: bool, expected: bool
) -> None:
    stream = _Tty() if tty else io.StringIO()
    assert use_color(choice, env, stream) is expected


def test_a_plain_style_never_adds_escape_codes() -> None:
    style = Style(enabled=False)
    for text in ("signed", "failed: boom", "CRITICAL"):
        assert style.status(text) == text
        assert style.severity(text, "CRITICAL") == text


def test_statuses_and_severities_get_their_colours() -> None:
    style = Style(enabled=True)
    assert style.status("signed") == click.style("signed", fg="green")
    assert style.status("failed: registry down") == click.style(
        "failed: registry down", fg="red", bold=True
    )
    assert style.status("partial (1/2): x") == click.style("partial (1/2): x", fg="yellow")
    assert style.severity("HIGH", "high") == click.style("HIGH", fg="red")
    assert style.status("something else") == "something else"


def test_a_coloured_table_keeps_its_columns_aligned() -> None:
    style = Style(enabled=True)
    rows = [["app", "signed"], ["backend-service", "failed: x"]]
    plain = table(["image", "status"], rows)
    coloured = table(["image", "status"], rows, paint=lambda i, c: style.status(c))
    assert coloured != plain
    assert ANSI.sub("", coloured) == plain
    assert [line.index("signed") for line in plain.splitlines() if "signed" in line] == [17]


def test_console_headings_are_coloured_only_when_asked() -> None:
    for color, expect_ansi in (("always", True), ("never", False)):
        stream = io.StringIO()
        console = Console({}, stream=stream, color=color)
        with console.group("build app"):
            console.write("step 1/2")
        console.warn("careful")
        assert bool(ANSI.search(stream.getvalue())) is expect_ansi
        assert "==> build app" in ANSI.sub("", stream.getvalue())


def test_github_workflow_commands_are_never_coloured() -> None:
    stream = io.StringIO()
    console = Console({"GITHUB_ACTIONS": "true"}, stream=stream, color="always")
    with console.group("push app"):
        console.error("went wrong")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "::group::push app"
    assert "::error::went wrong" in lines
    assert lines[-1] == "::endgroup::"


@pytest.mark.parametrize(
    ("count", "noun", "plural", "text"),
    [(1, "layer", None, "1 layer"), (3, "layer", None, "3 layers"), (0, "tag", None, "0 tags"),
     (1, "registry", "registries", "1 registry"), (2, "registry", "registries", "2 registries")],
)  # fmt: skip
def test_counts_name_their_noun_in_the_right_number(
    count: int, noun: str, plural: str | None, text: str
) -> None:
    assert counted(count, noun, plural) == text


def test_every_command_has_help_with_an_example() -> None:
    assert cli.commands, "no commands"
    for name, command in cli.commands.items():
        ctx = click.Context(command, info_name=name)
        text = command.get_help(ctx)
        assert "Examples:" in text, name
        assert f"shipit {name}" in text, name
