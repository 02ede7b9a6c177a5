"""PEP 440 versions, for the `pep440` tag rule (Python projects' release tags).

Parsed with the regular expression PEP 440 gives in its appendix and normalized as the
PEP says: `1.1beta2` -> `1.1b2`, `1.0dev4` -> `1.0.dev4`, `1.2post1` -> `1.2.post1`,
`v1.1.1` -> `1.1.1`. A version with a pre-, post- or dev-release part is not a final
release: like a SemVer prerelease it only ever gets its full version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_PATTERN: Final = re.compile(
    r"""
    v?
    (?:(?P<epoch>[0-9]+)!)?
    (?P<release>[0-9]+(?:\.[0-9]+)*)
    (?P<pre>[-_.]?(?P<pre_l>a|b|c|rc|alpha|beta|pre|preview)[-_.]?(?P<pre_n>[0-9]+)?)?
    (?P<post>(?:-(?P<post_n1>[0-9]+))|(?:[-_.]?(?P<post_l>post|rev|r)[-_.]?(?P<post_n2>[0-9]+)?))?
    (?P<dev>[-_.]?(?P<dev_l>dev)[-_.]?(?P<dev_n>[0-9]+)?)?
    (?:\+(?P<local>[a-z0-9]+(?:[-_.][a-z0-9]+)*))?
    """,
    re.VERBOSE | re.IGNORECASE,
)
_PRE_NAMES: Final = {"alpha": "a", "beta": "b", "c": "rc", "pre": "rc", "preview": "rc"}


@dataclass(frozen=True, kw_only=True)
class Pep440:
    release: tuple[int, ...]
    epoch: int = 0
    pre: tuple[str, int] | None = None
    post: int | None = None
    dev: int | None = None
    local: str | None = None

    @property
    def is_final(self) -> bool:
        """No pre-, post- or dev-release part (what may float and bring `latest`)."""
        return self.pre is None and self.post is None and self.dev is None

    @property
    def major(self) -> int:
        return self.release[0]

    @property
    def minor(self) -> int:
        return self.release[1] if len(self.release) > 1 else 0

    @property
    def patch(self) -> int:
        return self.release[2] if len(self.release) > 2 else 0

    def __str__(self) -> str:
        text = f"{self.epoch}!" if self.epoch else ""
        text += ".".join(str(part) for part in self.release)
        if self.pre is not None:
            text += f"{self.pre[0]}{self.pre[1]}"
        if self.post is not None:
            text += f".post{self.post}"
        if self.dev is not None:
            text += f".dev{self.dev}"
        if self.local:
            text += "+" + re.sub(r"[-_]", ".", self.local.lower())
        return text


def parse(text: str) -> Pep440 | None:
    """The PEP 440 version `text` spells, or None when it is not one."""
    m = _PATTERN.fullmatch(text.strip())
    if m is None:
        return None
    pre = None
    if m.group("pre_l"):
        label = m.group("pre_l").lower()
        pre = (_PRE_NAMES.get(label, label), int(m.group("pre_n") or 0))
    post = None
    if m.group("post"):
        post = int(m.group("post_n1") or m.group("post_n2") or 0)
    dev = int(m.group("dev_n") or 0) if m.group("dev") else None
    return Pep440(
        epoch=int(m.group("epoch") or 0),
        release=tuple(int(part) for part in m.group("release").split(".")),
        pre=pre,
        post=post,
        dev=dev,
        local=m.group("local"),
    )
