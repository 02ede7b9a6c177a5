"""The template sandbox: strict names, no internals, no way to run away."""

from __future__ import annotations

import tracemalloc

import pytest

from shipit import templates

VALUES = {"version": "1.2.3", "major": 1, "branch": "main", "env": {"HOME": "/root"}}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("plain", "plain"),
        ("{{ version }}", "1.2.3"),
        ("v{{ major }}-{{ branch | upper }}", "v1-MAIN"),
        ("{% if major > 0 %}stable{% else %}beta{% endif %}", "stable"),
        ("{{ branch ~ '-' ~ major * 2 }}", "main-2"),
        ("{{ range(3) | join('.') }}", "0.1.2"),
        ("{% set x = branch %}{{ x }}", "main"),
        ("{{ 2 ** 10 }}", "1024"),
    ],
)
def test_expressions_work(source: str, expected: str) -> None:
    assert templates.render(source, VALUES) == expected


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ verison }}", "'verison' is undefined"),
        ("{{ ''.__class__ }}", "unsafe"),
        ("{{ version.__class__.__mro__ }}", "unsafe"),
        ("{{ env.__init__.__globals__ }}", "unsafe"),
        ("{{ cycler.__init__.__globals__.os }}", "undefined|unsafe"),
        ("{% for i in range(10) %}{{ i }}{% endfor %}", "'for' is not allowed"),
        ("{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "'macro' is not allowed"),
        ("{% include 'x' %}", "'include' is not allowed"),
        ("{% extends 'x' %}", "'extends' is not allowed"),
        ("{{ range(10**9) | join }}", "larger than"),
        ("{{ 'x' * 100000000 }}", "too large"),
        ("{{ [1] * 100000000 }}", "too large"),
        ("{{ 2 ** 100 }}", "larger than 64"),
        ("{{ (((10 ** 60) ** 60) ** 60) ** 60 }}", "too large"),
        ("{{ 'x' * 4000 ~ 'y' * 4000 }}", "rendered 8000 characters"),
        ("{{ lipsum(100000) }}", "undefined"),
        ("{{ self.__init__ }}", "undefined|unsafe"),
    ],
)
def test_what_a_template_cannot_do(source: str, message: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(templates.TemplateError, match=message):
            templates.render(source, VALUES)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # what matters: refused before it was built (the huge ones would take gigabytes)
    assert peak < 64 * 1024 * 1024, f"peak {peak / 1e6:.0f} MB"


def test_enable_templates_must_say_true_or_false() -> None:
    assert templates.render_bool("{{ major > 0 }}", VALUES) is True
    with pytest.raises(templates.TemplateError, match="true or false"):
        templates.render_bool("{{ branch }}", VALUES)


def test_names_are_reported_for_checks() -> None:
    assert templates.names("{{ major }}.{{ minor }}") == {"major", "minor"}
    assert templates.check("{{ oops") is not None
    assert templates.check("{% for x in y %}{% endfor %}") is not None
