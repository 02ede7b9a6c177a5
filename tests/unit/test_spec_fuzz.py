"""Bad and hostile specs: whatever the input, `shipit validate` and `shipit plan` exit 0, or
exit 2 with located messages; never a traceback, never an internal error.

Two generators: hypothesis builds documents from the spec's own vocabulary (and junk), and
a mutation fuzzer damages valid specs as text (deleted spans, duplicated lines, stray YAML
and template syntax, unicode).
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shipit.cli import main
from tests.support.gitrepo import make_repo

ROOT = Path(__file__).resolve().parents[2]
LOCATED = re.compile(r"^.+:\d+:\d+: .+$")
KEYS = [
    "version", "registries", "image", "images", "scan", "sign", "push", "tags", "flavor",
    "name", "context", "dockerfile", "target", "platform", "build_args", "labels", "pull",
    "cache_from", "release", "tag_pattern", "type", "pattern", "value", "event", "enable",
    "priority", "prefix", "suffix", "format", "length", "group", "branch", "latest", "floating",
    "fail_on", "scanners", "ignore_unfixed", "ignorefile", "reports", "timeout", "key", "tlog",
    "url", "username", "password_env", "insecure", "ca_file", "parallel", "retries", "x-any",
]  # fmt: skip
WORDS = [
    "semver", "ref", "sha", "raw", "edge", "match", "schedule", "branch", "tag", "pr", "HIGH",
    "never", "true", "false", "1", "0", "-1", "9" * 30, "{{ version }}", "{{ nope }}", "{{",
    "${HOME}", "${MISSING}", "${X:-d}", "$$", "ghcr.io/acme", "https://x.io", "a b", "",
    "Ünïcödé", "\u202e", "../../etc/passwd", "%s%n", "{% for x in range(9) %}{% endfor %}",
    "{{ ''.__class__ }}", "v1.2.3", "(?P<version>.*)", "(", "env://X", "awskms:///k",
]  # fmt: skip

scalars = st.one_of(
    st.sampled_from(WORDS),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=5
        ),
    ),
    max_leaves=25,
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz") / "repo"
    make_repo(root, [{"tag": "v1.0.0"}, {}])
    (root / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    return root


def check(repo: Path, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    (repo / "shipit.yml").write_text(text, encoding="utf-8")
    env = {"PATH": os.environ["PATH"], "HOME": str(repo.parent)}
    for command in (["validate"], ["plan", "--json"]):
        code = main([*command, "-C", str(repo)], env=env)
        _, err = capsys.readouterr()
        assert code in (0, 2), f"exit {code} for:\n{text}\n{err}"
        assert "Traceback" not in err and "internal error" not in err, f"{text}\n{err}"
        if code == 2:
            problems = [
                line for line in err.splitlines() if not line.startswith(("shipit:", "hint:"))
            ]
            assert problems or "shipit: error:" in err, err
            for line in problems:
                assert LOCATED.match(line), f"not located: {line!r}\nspec:\n{text}"


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=documents)
def test_generated_documents(repo: Path, document: Any, capsys: pytest.CaptureFixture[str]) -> None:
    check(repo, yaml.safe_dump(document, allow_unicode=True), capsys)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    image=st.dictionaries(
        st.sampled_from(KEYS), scalars | st.lists(scalars, max_size=3), max_size=6
    ),
    top=st.dictionaries(
        st.sampled_from(KEYS),
        scalars | st.dictionaries(st.sampled_from(KEYS), scalars, max_size=3),
        max_size=4,
    ),
)
def test_near_valid_documents(
    repo: Path, image: dict[str, Any], top: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    document = {
        "version": 1,
        "registries": ["r.example/o"],
        **top,
        "image": {"name": "app", **image},
    }
    check(repo, yaml.safe_dump(document, allow_unicode=True), capsys)


SEEDS = sorted(ROOT.glob("examples/**/shipit.yml")) + sorted(
    (ROOT / "tests" / "data").glob("*.yml")
)
JUNK = [
    ":",
    "- ",
    "{",
    "}",
    "[",
    "]",
    '"',
    "'",
    "&a",
    "*a",
    "!!python/object",
    "${",
    "{{",
    "}}",
    "\t",
    "\n",
    "  ",
    "#",
    "<<: *x",
    "\u0000",
    "é",
    "\ud7ff",
]


def mutate(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    for _ in range(rng.randint(1, 4)):
        if not lines:
            break
        i = rng.randrange(len(lines))
        action = rng.randrange(5)
        if action == 0:
            del lines[i]
        elif action == 1:
            lines.insert(i, lines[i])
        elif action == 2:
            j = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:j] + rng.choice(JUNK) + lines[i][j:]
        elif action == 3:
            lines[i] = " " * rng.randint(0, 6) + lines[i].lstrip()
        else:
            lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
    return "\n".join(lines) + "\n"


def test_mutated_valid_specs(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert SEEDS, "no seed specs"
    rng = random.Random(20261122)
    for seed in SEEDS:
        original = seed.read_text(encoding="utf-8")
        for _ in range(60):
            check(repo, mutate(original, rng), capsys)
