"""What an image takes from the top of the spec, where sections may stand as defaults.

Two kinds of inheritance (DESIGN section 2):

- a value or list (`registries`, `tags`): the image's own replaces the top one whole;
  `inherited` picks the node to read.
- a mapping section (`flavor`, `scan`, `sign`, `push`): merged key by key, the image's keys
  winning. `scan:` with nothing under it means "on, with defaults"; a switchable section
  (`scan`, `sign`) is turned off by `false`.

A mapping section is declared once, in its own module, as a `Mergeable`: its key, the keys
it allows, whether `false` turns it off, and its reader, which takes the `Reader` and the
merged `Section` and returns the section's record. Adding one is: the record in `records`,
a module with the reader and its `Mergeable`, the `Mergeable` listed in `images.INHERITED`
and resolved in `images.read_image` (and the JSON Schema).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from yaml.nodes import Node

from shipit.spec.nodes import Reader, is_bool, is_null

T = TypeVar("T")


@dataclass
class Section:
    """A mapping section, possibly split between the top level and an image."""

    disabled: bool = False
    entries: dict[str, Node] = field(default_factory=dict)
    present: bool = False

    @property
    def on(self) -> bool:
        """Written at the top or in the image, and not turned off."""
        return self.present and not self.disabled


@dataclass(frozen=True, kw_only=True)
class Mergeable(Generic[T]):
    """A mapping section that may stand at the top (for every image) and in an image."""

    key: str
    keys: tuple[str, ...]  # the keys allowed under it
    read: Callable[[Reader, Section], T]
    switchable: bool = False  # `key: false` turns it off, `key: true` on with defaults

    def resolve(self, r: Reader, top: Mapping[str, Node], image: Mapping[str, Node]) -> T:
        """The image's record: the top-level and image-level sections merged, then read."""
        return self.read(r, merge(r, self, top, image))


def merge(
    r: Reader, section: Mergeable[T], top: Mapping[str, Node], image: Mapping[str, Node]
) -> Section:
    """Top-level and image-level mapping sections, merged key by key (image wins)."""
    key = section.key
    merged = Section()
    for node in (top.get(key), image.get(key)):
        if node is None:
            continue
        if is_bool(node) and section.switchable:
            on = r.boolean(node, key)
            merged.disabled = not on
            merged.present = merged.present or bool(on)
            if not on:
                merged.entries = {}
            continue
        if is_null(node):  # `scan:` with nothing under it means "on, with defaults"
            merged.present, merged.disabled = True, False
            continue
        entries = r.mapping(node, key, section.keys)
        if entries is not None:
            merged.entries.update(entries)
            merged.present, merged.disabled = True, False
    return merged


def inherited(key: str, top: Mapping[str, Node], image: Mapping[str, Node]) -> Node | None:
    """The image's own node for `key`, else the top-level one: replaced whole, not merged."""
    return image[key] if key in image else top.get(key)
