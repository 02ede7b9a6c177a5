"""Hostile specs for the fuzz tests: generated from a seed, checked through the real CLI.

`hostile_spec(rng)` turns one `random.Random` into one spec file's bytes: a valid seed spec
(every path field set, every section present), damaged in its structure (wrong types in
every position, hostile values in every path field, merge keys and anchors, deep nesting),
in its text (stray YAML, huge numbers, deleted and duplicated lines) and in its bytes
(invalid UTF-8, NUL, truncated sequences). The same seed always makes the same spec.

`outcome_problem(code, err)` says what is wrong with how shipit answered: anything but
exit 0, or exit 2 with every line located (FILE:LINE:COL) or a plain `shipit: error:`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import random
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from shipit.cli import main
from tests.support.gitrepo import make_repo

ROOT = Path(__file__).resolve().parents[2]
LOCATED = re.compile(r"^.+:\d+:\d+: .+$")

# A spec that is valid in `fuzz_repo` and uses every path field and every section.
FULL_SPEC = """\
version: 1
x-defaults: &defaults
  registries:
    - url: r.example/acme
      username: bot
      password_env: REGISTRY_TOKEN
      ca_file: certs/registry-ca.crt
    - ghcr.io/acme
tags:
  - {type: semver, pattern: "{{version}}"}
  - {type: ref, event: branch, prefix: "b-"}
  - {type: sha, length: 12}
  - {type: match, pattern: "v(\\\\d+)", group: "1"}
  - {type: raw, value: "x-{{ sha[:7] }}", enable: "{{ is_release }}"}
flavor: {latest: auto, prefix: "", suffix: "", floating: auto}
scan:
  fail_on: HIGH
  scanners: [vuln, secret]
  ignorefile: .trivyignore
  reports: {json: out/scan.json, sarif: out/scan.sarif, gitlab: out/gl.json}
  timeout: 10m
  cache_dir: .cache/trivy
sign:
  key: cosign.key
  tlog: false
  annotations: {team: core}
push: {parallel: 4, retries: 3}
images:
  - <<: *defaults
    name: api
    context: services/api
    dockerfile: Dockerfile
    build_args: {VERSION: "{{ version }}"}
    labels: {org.opencontainers.image.description: api}
    release: {tag_pattern: "api/v(?P<version>.*)"}
    platforms: [linux/amd64, linux/arm64]
  - name: web
    registries: [r.example/web]
    context: services/web
    engine: buildx
    secrets:
      npm: {file: secrets/npm.txt}
      token: {env: NPM_TOKEN}
    cache_from: [type=registry,ref=r.example/cache]
    no_cache: true
"""
PATH_FIELDS: tuple[tuple[str, ...], ...] = (
    ("images", "0", "context"),
    ("images", "0", "dockerfile"),
    ("images", "1", "secrets", "npm", "file"),
    ("scan", "ignorefile"),
    ("scan", "reports", "json"),
    ("scan", "cache_dir"),
    ("sign", "key"),
    ("x-defaults", "registries", "0", "ca_file"),
)
HOSTILE_STRINGS: tuple[str, ...] = (
    "a" * 5000,
    "b" * 256,
    "c/" * 2100,
    "\x00",
    "a\x00b",
    "\x07",
    "\x1b[31mred",
    "a\nb",
    "\r",
    "\x7f",
    "\x85",
    "\u202e",
    "\ufeff",
    "\ud800",
    "\udcff",
    "\U0001f600",
    "../../../../etc/passwd",
    "/",
    "/dev/zero",
    "/proc/self/mem",
    ".",
    "",
    " ",
    "~/x",
    "${HOME}",
    "${NOPE}",
    "${",
    "$$",
    "{{",
    "{{ version }}",
    "{{ nope }}",
    "{{" + "(" * 300 + "1" + ")" * 300 + "}}",
    "{{ (9**64)" + "*(9**64)" * 80 + " }}",
    "(" * 300,
    "a{99999999999}",
    "\u00b2",
    "9" * 5000,
    "1e999",
    "-0",
)
HOSTILE_VALUES: tuple[Any, ...] = (
    *HOSTILE_STRINGS,
    None,
    True,
    False,
    0,
    -1,
    2**63,
    10**40,
    1.5,
    float("inf"),
    float("nan"),
    [],
    {},
    [None],
    {"a": None},
    [[[]]],
    {"": ""},
    {None: 1},
    {1: 2},
)
RAW_SNIPPETS: tuple[str, ...] = (
    "9" * 5000,
    "0x" + "f" * 5000,
    "-" + "9" * 40,
    "1e999",
    ".inf",
    ".nan",
    "0o777777777777777777777777777777777",
    "190:20:30",
    "2001-12-14",
    "!!binary aGVsbG8=",
    "!!python/object:os.system",
    "!!set {a}",
    "!!omap [a: 1]",
    "!!str",
    "!!str [a]",
    "!!int x",
    "!!int ''",
    "!!int -",
    "!!bool x",
    "!!bool ''",
    "!!float x",
    "!!null x",
    "!!timestamp x",
    "!!map [a]",
    "!!seq {a: 1}",
    "!local x",
    "!<tag:example.com,2000:x> y",
    "? [a]",
    "&a",
    "*a",
    "*undefined",
    "<<: *a",
    "<<: [*a, *a]",
    "<<:",
    "[" * 80,
    "{a: " * 80,
    '"\\ud800"',
    '"\\0"',
    '"\\x1b"',
    "'" + "x" * 5000 + "'",
    ":",
    "- ",
    "{",
    "}",
    "]",
    '"',
    "#",
    "\t",
    "${",
    "{{",
    "%YAML 1.1",
    "---",
    "...",
)
ANCHORS: tuple[str, ...] = (
    "x-a: &a\n",
    "x-a: &a 1\n",
    "x-a: &a [1, 2]\n",
    "x-a: &a {pull: true}\n",
    "x-a: &a {<<: *a}\n",
    "x-a: &a [*a]\n",
    "x-a: &a {registries: [r.example/o], name: z}\n",
)
BAD_BYTES: tuple[bytes, ...] = (
    b"\xff",
    b"\xfe\xff",
    b"\xc3",
    b"\xe2\x82",
    b"\x80",
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\xc0\xaf",  # overlong
    b"\x00",
    b"\x1b",
    b"\r",
    b"\xef\xbb\xbf",  # a BOM in the middle
)
SEED_SPECS: tuple[str, ...] = (
    FULL_SPEC,
    *(  # the examples without their comment lines: YAML skips them, and so can the fuzzer
        "".join(
            line
            for line in p.read_text(encoding="utf-8").splitlines(keepends=True)
            if not line.lstrip().startswith("#")
        )
        for p in sorted(ROOT.glob("examples/*/shipit.yml"))
    ),
)


_FAST_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_SEED_DOCUMENTS: tuple[Any, ...] = tuple(yaml.safe_load(text) for text in SEED_SPECS)


def fuzz_repo(root: Path, *, git: bool = True) -> Path:
    """A git repository (or a plain folder) where every seed spec is valid: the examples' files."""
    if git:
        make_repo(root, [{"tag": "v1.0.0"}, {}])
    root.mkdir(parents=True, exist_ok=True)
    for example in sorted((ROOT / "examples").iterdir()):
        shutil.copytree(example, root, dirs_exist_ok=True)
    for name, text in {
        ".trivyignore": "CVE-2000-0001\n",
        "cosign.key": "not a real key\n",
        "secrets/npm.txt": "token\n",
        "services/api/Dockerfile": "FROM scratch\n",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    return root


# -- generating --------------------------------------------------------------------------


def hostile_spec(rng: random.Random) -> bytes:
    """One damaged spec, from the seeds, as the bytes of a file."""
    document = copy.deepcopy(rng.choice(_SEED_DOCUMENTS))
    text = rng.choice(SEED_SPECS)
    if rng.random() < 0.6:  # damage the structure, then write it out again
        for _ in range(rng.randint(1, 4)):
            document = rng.choice(_TREE_DAMAGE)(document, rng)
        text = _dump(document, rng)
    for _ in range(rng.choice((0, 0, 1, 2, 4))):
        text = rng.choice(_TEXT_DAMAGE)(text, rng)
    data = text.encode("utf-8", errors="surrogatepass")
    for _ in range(rng.choice((0, 0, 0, 1, 2))):
        data = _damage_bytes(data, rng)
    return data


def _dump(document: Any, rng: random.Random) -> str:
    style = {"allow_unicode": rng.random() < 0.5, "default_flow_style": rng.random() < 0.3}
    try:
        return yaml.dump(document, Dumper=_FAST_DUMPER, **style)  # type: ignore[no-any-return]
    except UnicodeEncodeError:  # libyaml cannot write a lone surrogate; PyYAML escapes it
        return yaml.dump(document, Dumper=yaml.SafeDumper, **style)
    except (yaml.YAMLError, ValueError, RecursionError):  # what PyYAML cannot write
        return FULL_SPEC


def _places(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position in a document: the path of keys and indexes to it."""
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _places(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _places(value, (*path, index))
    return found


def _set(document: Any, path: Sequence[Any], value: Any) -> Any:
    """`document` with the value at `path` replaced (the parents made when missing)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(document, list) and isinstance(head, str) and head.isdigit():
        head = int(head)
    if isinstance(document, list) and isinstance(head, int) and head < len(document):
        document[head] = _set(document[head], rest, value)
        return document
    if not isinstance(document, dict):
        document = {}
    document[head] = _set(document.get(head), rest, value)
    return document


def _hostile(rng: random.Random) -> Any:
    value = rng.choice(HOSTILE_VALUES)
    return value.copy() if isinstance(value, list | dict) else value


def _wrong_type(document: Any, rng: random.Random) -> Any:
    return _set(document, rng.choice(_places(document))[:8], _hostile(rng))


def _hostile_path(document: Any, rng: random.Random) -> Any:
    return _set(document, rng.choice(PATH_FIELDS), rng.choice(HOSTILE_STRINGS))


def _deep(document: Any, rng: random.Random) -> Any:
    value: Any = rng.choice(("x", None, 1))
    for _ in range(rng.choice((10, 40, 63, 64, 65, 100))):
        value = [value] if rng.random() < 0.5 else {"k": value}
    return _set(document, rng.choice(_places(document))[:6], value)


def _unknown_key(document: Any, rng: random.Random) -> Any:
    place = rng.choice(_places(document))[:6]
    key = rng.choice(("nope", "", "x-ok", "<<", "Name", "a" * 300, "\x00", 1, None, True))
    return _set(document, (*place, key), _hostile(rng))


def _delete(document: Any, rng: random.Random) -> Any:
    place = rng.choice(_places(document))
    if len(place) < 1:
        return document
    parent: Any = document
    for key in place[:-1]:
        parent = parent[key]
    if isinstance(parent, dict | list):
        del parent[place[-1]]
    return document


_TREE_DAMAGE: tuple[Callable[[Any, random.Random], Any], ...] = (
    _wrong_type,
    _wrong_type,
    _hostile_path,
    _hostile_path,
    _deep,
    _unknown_key,
    _delete,
)


def _lines_op(text: str, rng: random.Random) -> str:
    """The mutations the first fuzzer used: delete, duplicate, indent, cut a line."""
    lines = text.splitlines() or [""]
    i = rng.randrange(len(lines))
    action = rng.randrange(4)
    if action == 0:
        del lines[i]
    elif action == 1:
        lines.insert(i, lines[i])
    elif action == 2:
        lines[i] = " " * rng.randint(0, 6) + lines[i].lstrip()
    else:
        lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
    return "\n".join(lines) + "\n"


def _snippet(text: str, rng: random.Random) -> str:
    """A raw YAML snippet in place of a value, or anywhere in a line."""
    lines = text.splitlines() or [""]
    i = rng.randrange(len(lines))
    line, snippet = lines[i], rng.choice(RAW_SNIPPETS)
    key, colon, _ = line.partition(": ")
    if colon and rng.random() < 0.7:
        lines[i] = f"{key}: {snippet}"
    else:
        j = rng.randrange(len(line) + 1)
        lines[i] = line[:j] + snippet + line[j:]
    return "\n".join(lines) + "\n"


def _merge(text: str, rng: random.Random) -> str:
    """An anchor (of any kind) first, and a merge of it somewhere."""
    lines = text.splitlines() or [""]
    i = rng.randrange(len(lines))
    indent = len(lines[i]) - len(lines[i].lstrip(" "))
    merge = rng.choice(("<<: *a", "<<: [*a]", "<<: [*a, *a]", "<<: *a\n<<: *a", "<<:"))
    lines[i:i] = [" " * indent + part for part in merge.split("\n")]
    return rng.choice(ANCHORS) + "\n".join(lines) + "\n"


_TEXT_DAMAGE: tuple[Callable[[str, random.Random], str], ...] = (
    _lines_op,
    _snippet,
    _snippet,
    _merge,
)


def _damage_bytes(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data) + 1)
    if rng.random() < 0.2:
        return data[:at]  # cut, maybe inside a UTF-8 sequence
    return data[:at] + rng.choice(BAD_BYTES) + data[at:]


# -- checking ----------------------------------------------------------------------------


def outcome_problem(code: int, err: str) -> str | None:
    """What is wrong with exit `code` and stderr `err`, or None when it is a good answer."""
    if code not in (0, 2):
        return f"exit {code}"
    if "Traceback" in err or "internal error" in err:
        return "an internal error"
    if code == 0:
        return None
    lines = [line for line in err.splitlines() if not line.startswith(("shipit:", "hint:"))]
    if not lines and "shipit: error:" not in err:
        return "exit 2 without a message"
    for line in lines:
        if not LOCATED.match(line):
            return f"a line that is not FILE:LINE:COL: {line[:200]!r}"
    return None


def run_cli(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Exit code and stderr of an in-process `shipit ARGS`, where no capsys is (a worker)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args, env=env)
    return code, err.getvalue()


def fuzz_env(repo: Path) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": str(repo.parent)}


# -- many at once ------------------------------------------------------------------------

SHA = "0123456789abcdef0123456789abcdef01234567"
REFS = ("refs/heads/main", "refs/heads/feature/x", "refs/tags/v1.2.3", "refs/tags/api/v2.0.0-rc.1",
        "refs/pull/7/merge", "refs/tags/web/v0.3.1")  # fmt: skip


def fuzz_chunk(folder: str, seed: int, start: int, stop: int) -> tuple[int, list[str]]:
    """Cases `start`..`stop` of a run (case i made by `Random(seed + i)`), in a fresh folder.

    Each goes through `shipit plan --json` (which reads the spec as `validate` does, then
    plans, with the context from overrides, so no git is read: the fast tests plan in a
    git repository), every tenth through `shipit validate` too. Returns how many commands
    ran and a description of each bad outcome.
    """
    root = fuzz_repo(Path(folder) / f"chunk-{start}", git=False)
    env = fuzz_env(root)
    ran, bad = 0, []
    for case in range(start, stop):
        rng = random.Random(seed + case)
        (root / "shipit.yml").write_bytes(hostile_spec(rng))
        context = ["--sha", SHA, "--ref", rng.choice(REFS)]
        commands = [["plan", "--json", *context]] + ([["validate"]] if case % 10 == 0 else [])
        for command in commands:
            code, err = run_cli([*command, "-C", str(root)], env)
            ran += 1
            problem = outcome_problem(code, err)
            if problem:
                bad.append(f"case {case} (Random({seed} + {case})), {command[0]}: {problem}")
    return ran, bad
