"""Reading a spec file: the top level (`version`, `image:`/`images:`, `x-` keys), then each image.

`load` reads the file (at most `MAX_SPEC` bytes of UTF-8; a byte that is not UTF-8 is a
located problem), `parse` the text; both raise one `SpecError` listing every problem,
sorted by line and column.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final

from yaml.nodes import Node

from shipit.errors import Location, Problem, SpecError, UsageError
from shipit.spec.composing import YamlSyntaxError, compose
from shipit.spec.images import INHERITED, read_image
from shipit.spec.nodes import Reader, is_null, key_node, unknown_key_message
from shipit.spec.paths import PathProblem, shown
from shipit.spec.paths import check as check_path
from shipit.spec.records import SPEC_VERSION, Spec

_TOP_KEYS: Final = ("version", "image", "images", *INHERITED)
MAX_SPEC: Final = 1024 * 1024  # bytes; a spec is a few kilobytes


def load(path: Path, env: Mapping[str, str]) -> Spec:
    """Read and parse the spec at `path`; raises SpecError listing every problem."""
    return parse(_read(path), path, env)


def _read(path: Path) -> str:
    """The spec's text: at most MAX_SPEC bytes of UTF-8, or a clear error."""
    try:
        check_path(str(path))
        with path.open("rb") as handle:
            data = handle.read(MAX_SPEC + 1)
    except FileNotFoundError:
        raise UsageError(
            f"no spec at {path}", hint="write one with `shipit init`, or point -f at it"
        ) from None
    except IsADirectoryError:
        raise UsageError(f"the spec {path} is a folder, not a file") from None
    except PathProblem as exc:
        raise UsageError(f"the spec's path {shown(str(path))} {exc}") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    shown_path = _shown_path(path)
    if len(data) > MAX_SPEC:
        too_large = f"the spec is too large: more than {MAX_SPEC // 1024 // 1024} MiB"
        raise SpecError([_at_start(shown_path, too_large)])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError([_not_utf8(shown_path, data, exc)]) from None


def _not_utf8(file: str, data: bytes, exc: UnicodeDecodeError) -> Problem:
    """Where the first byte that is not UTF-8 is, as line and column of the text before it."""
    before = data[: exc.start]
    line_start = before.rfind(b"\n") + 1
    column = len(before[line_start:].decode("utf-8", errors="replace")) + 1
    byte = data[exc.start]
    return Problem(
        location=Location(file=file, line=before.count(b"\n") + 1, column=column),
        message=f"the spec is not UTF-8 text (byte 0x{byte:02x} here)",
    )


def parse(text: str, path: Path, env: Mapping[str, str]) -> Spec:
    """Parse spec `text` as if read from `path` (relative paths start at its folder)."""
    shown_path = _shown_path(path)
    try:
        root_node = compose(text, shown_path)
    except YamlSyntaxError as exc:
        raise SpecError([exc.problem]) from None
    reader = Reader(shown_path, env, path.parent)
    try:
        spec = _spec(reader, root_node, path)
    except RecursionError:  # composing bounds the depth; this is the last line of defence
        reader.problems.append(_at_start(shown_path, "the spec is nested too deeply"))
        spec = None
    if reader.problems or spec is None:
        raise SpecError(sorted(reader.problems, key=lambda p: (p.location.line, p.location.column)))
    return spec


def _at_start(file: str, message: str) -> Problem:
    return Problem(location=Location(file=file, line=1, column=1), message=message)


def _shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except (OSError, ValueError, RuntimeError):
        return str(path)


def _spec(r: Reader, node: Node | None, path: Path) -> Spec | None:
    if node is None or is_null(node):
        r.problems.append(
            _at_start(r.file, "the spec is empty: it needs at least `version: 1` and an image")
        )
        return None
    top = r.mapping(node, "the spec", allowed=None)
    if top is None:
        return None
    for key, value in list(top.items()):
        if key.startswith("x-"):  # extension keys hold YAML anchors; shipit ignores them
            del top[key]
        elif key not in _TOP_KEYS:
            r.error(key_node(node, key) or value, unknown_key_message(key, "the spec", _TOP_KEYS))
            del top[key]
    _version(r, node, top)
    image_nodes = _image_nodes(r, node, top)
    images = [read_image(r, n, top) for n in image_nodes]
    names: dict[str, Node] = {}
    for image_node, image in zip(image_nodes, images, strict=True):
        if image is None:
            continue
        if image.name in names:
            r.error(image_node, f"image name '{image.name}' is used twice")
        names[image.name] = image_node
    if r.problems:
        return None
    return Spec(
        path=path,
        root=r.root,
        version=SPEC_VERSION,
        images=tuple(i for i in images if i is not None),
    )


def _version(r: Reader, node: Node, top: Mapping[str, Node]) -> None:
    version_node = top.get("version")
    if version_node is None:
        r.error(node, "missing `version: 1` at the top of the spec")
        return
    version = r.integer(version_node, "version")
    if version is not None and version != SPEC_VERSION:
        r.error(
            version_node, f"spec version {version} is not supported; this shipit reads version 1"
        )


def _image_nodes(r: Reader, node: Node, top: Mapping[str, Node]) -> list[Node]:
    """The image nodes: `image:` (one) or `images:` (a list), never both."""
    single, many = top.get("image"), top.get("images")
    if single is not None and many is not None:
        r.error(many, "use either `image:` (one image) or `images:` (a list), not both")
        return []
    if single is not None:
        return [single]
    if many is None:
        r.error(node, "the spec has no image: add `image:` or `images:`")
        return []
    items = r.sequence(many, "images")
    if items is not None and not items:
        r.error(many, "`images` is empty")
    return items or []
