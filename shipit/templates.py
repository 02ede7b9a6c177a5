"""Jinja2 templates for tags, build args, labels and annotations, in a sandbox.

Undefined names are errors (a typo must not silently produce an empty tag), Python
internals are out of reach (`{{ ''.__class__ }}` fails), and a template cannot run away:
there are no loops, macros or includes (a tag needs expressions, not programs), `range()`
and repetition (`'x' * n`) are bounded, powers are small, and the output is capped.
Expressions nested so deeply that Jinja would recurse out of the stack are an error too.
"""

from __future__ import annotations

import functools
import operator
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jinja2

# Jinja2 is imported when a string first holds a "{" (every template does; a plain string is
# never parsed), not at shipit's start: its import is a tenth of the start-up of every command.

MAX_OUTPUT = 4096
MAX_RANGE = 1000
MAX_EXPONENT = 64
_TOO_DEEP = "the template nests expressions too deeply"


class TemplateError(Exception):
    """A template failed to parse or render; the message says why, without a traceback."""


def _call_binop(operator_name: str, left: Any, right: Any) -> Any:
    """The sandbox's `*` and `**` (the only binary operators it intercepts), bounded."""
    if operator_name == "**":
        if isinstance(right, int) and abs(right) > MAX_EXPONENT:
            raise TemplateError(f"an exponent of {right} is larger than {MAX_EXPONENT}")
        if isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > 4096:
            raise TemplateError("the power is too large")
        return operator.pow(left, right)
    for sequence, count in ((left, right), (right, left)):
        repeated = isinstance(sequence, str | list | tuple) and isinstance(count, int)
        if repeated and len(sequence) * count > MAX_OUTPUT:
            raise TemplateError(f"repeating a value {count} times makes it too large")
    return operator.mul(left, right)


def _bounded_range(*args: int) -> range:
    values = range(*args)
    if len(values) > MAX_RANGE:
        raise TemplateError(f"range() of {len(values)} items is larger than {MAX_RANGE}")
    return values


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    import jinja2  # noqa: PLC0415 (see the top of the module)
    from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: PLC0415

    class Sandbox(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
            return _call_binop(operator_name, left, right)

        def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
            # Only plain data is exposed; no attribute that starts with an underscore, and no
            # reaching into modules, functions or classes through their attributes.
            if attr.startswith("_"):
                return False
            return bool(super().is_safe_attribute(obj, attr, value))

    env = Sandbox(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        extensions=(),
    )
    env.globals = {"range": _bounded_range, "true": True, "false": False}
    return env


@functools.lru_cache(maxsize=1)
def _forbidden() -> tuple[type[jinja2.nodes.Node], ...]:
    """Statements a template may not use: each could loop, recurse or read other files."""
    from jinja2 import nodes  # noqa: PLC0415

    return (
        nodes.For, nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.Include,
        nodes.Import, nodes.FromImport, nodes.Extends, nodes.Block,
    )  # fmt: skip


@functools.lru_cache(maxsize=512)
def _compile(source: str) -> jinja2.Template:
    import jinja2  # noqa: PLC0415

    environment = _environment()
    try:
        ast = environment.parse(source)
        for node in ast.find_all(_forbidden()):
            word = type(node).__name__.lower()
            raise TemplateError(f"'{word}' is not allowed in a template (expressions and if only)")
        with warnings.catch_warnings():  # Python's compiler warns of things like `1[0]` on stderr
            warnings.simplefilter("ignore", SyntaxWarning)
            return environment.from_string(ast)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error: {exc.message}") from None
    except RecursionError:  # Jinja's parser and compiler recurse once per nested expression
        raise TemplateError(_TOO_DEEP) from None


def check(source: str) -> str | None:
    """The syntax error in `source`, or None if it parses."""
    if "{" not in source:  # no template syntax: plain text parses
        return None
    try:
        _compile(source)
    except TemplateError as exc:
        return str(exc)
    return None


def names(source: str) -> frozenset[str]:
    """The names a template reads from its context (for floating-tag scopes)."""
    if "{" not in source:
        return frozenset()
    import jinja2  # noqa: PLC0415
    from jinja2 import meta  # noqa: PLC0415

    try:
        ast = _environment().parse(source)
        return frozenset(meta.find_undeclared_variables(ast))
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template syntax error: {exc.message}") from None
    except RecursionError:
        raise TemplateError(_TOO_DEEP) from None


def render(source: str, values: Mapping[str, Any]) -> str:
    """Render `source` with `values`; every failure is a TemplateError with a short reason."""
    if "{" not in source:  # the common case: a plain string
        return source
    import jinja2  # noqa: PLC0415

    template = _compile(source)
    try:
        text = template.render(**values)
    except RecursionError:
        raise TemplateError(_TOO_DEEP) from None
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"{exc.message} (known names: {_known(values)})") from None
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"not allowed in a template: {exc}") from None
    except TemplateError:
        raise
    except Exception as exc:  # a filter or a date format that fails on its input
        raise TemplateError(f"{type(exc).__name__}: {exc}") from None
    if len(text) > MAX_OUTPUT:
        raise TemplateError(f"the template rendered {len(text)} characters; at most {MAX_OUTPUT}")
    return text.strip()


def render_bool(source: str, values: Mapping[str, Any]) -> bool:
    """Render an `enable` template, which must come out as true or false."""
    text = render(source, values).lower()
    if text not in ("true", "false"):
        raise TemplateError(f"must render to true or false, rendered '{text}'")
    return text == "true"


def _known(values: Mapping[str, Any]) -> str:
    return ", ".join(sorted(values))
