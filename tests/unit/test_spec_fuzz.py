"""Bad and hostile specs: whatever the input, `shipit validate` and `shipit plan` exit 0, or
exit 2 with located messages; never a traceback, never an internal error.

Generators: hypothesis builds documents from the spec's own vocabulary, junk and hostile
values (very long strings, NUL and control characters, lone surrogates, huge numbers), and
damages a spec file's bytes; a mutation fuzzer damages valid specs as text; and
`tests.support.hostile` damages valid specs that use every path field and section in their
structure, text and bytes. The slow test runs 100,000 of those, a fixed seed and a fixed
count, spread over processes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import hostile
from tests.support.cli import run_shipit

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
    st.sampled_from(hostile.HOSTILE_STRINGS),
    st.text(alphabet=st.characters(categories=("Cc", "Cs", "Cf", "Zl", "Zs", "Lo")), max_size=12),
    st.integers(min_value=-(10**40), max_value=10**40),
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
    return hostile.fuzz_repo(tmp_path_factory.mktemp("fuzz") / "repo")


def check(repo: Path, spec: str | bytes, capsys: pytest.CaptureFixture[str]) -> None:
    data = spec.encode("utf-8", errors="surrogatepass") if isinstance(spec, str) else spec
    (repo / "shipit.yml").write_bytes(data)
    for command in (["validate"], ["plan", "--json"]):
        code, _, err = run_shipit([*command, "-C", str(repo)], capsys, hostile.fuzz_env(repo))
        problem = hostile.outcome_problem(code, err)
        assert problem is None, f"{problem} for:\n{data!r}\n{err}"


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
    examples = list((hostile.ROOT / "examples").glob("*/shipit.yml"))
    assert len(examples) >= 3 and len(hostile.SEED_SPECS) == 1 + len(examples), (
        "the full spec and every example"
    )
    rng = random.Random(20261122)
    for original in hostile.SEED_SPECS:
        check(repo, original, capsys)  # each seed is valid in the fuzz repository
        _, out, _ = run_shipit(["plan", "--json", "-C", str(repo)], capsys, hostile.fuzz_env(repo))
        assert json.loads(out)["images"], original
        for _ in range(60):
            check(repo, mutate(original, rng), capsys)


def test_hostile_specs(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A few hundred of what the slow test runs 100,000 of, planned in a git repository."""
    for case in range(300):
        check(repo, hostile.hostile_spec(random.Random(SEED + case)), capsys)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.sampled_from(hostile.SEED_SPECS),
    at=st.floats(min_value=0, max_value=1),
    junk=st.binary(max_size=16) | st.sampled_from(hostile.BAD_BYTES),
    cut=st.booleans(),
)
def test_damaged_file_bytes(
    repo: Path, seed: str, at: float, junk: bytes, cut: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    data = seed.encode("utf-8")
    where = int(len(data) * at)
    check(repo, data[:where] if cut else data[:where] + junk + data[where:], capsys)


SEED = 20261201
SLOW_COUNT = 100_000


@pytest.mark.slow
@pytest.mark.timeout(3600)  # a guard against a hang, not a bound on speed
def test_100000_hostile_specs(tmp_path: Path) -> None:
    """100,000 hostile specs (case i from Random(SEED + i)) across one process per core."""
    chunk = 2_000
    bounds = [(start, min(start + chunk, SLOW_COUNT)) for start in range(0, SLOW_COUNT, chunk)]
    workers = max(1, min(os.cpu_count() or 1, 4))
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = pool.starmap(
            hostile.fuzz_chunk, [(str(tmp_path), SEED, start, stop) for start, stop in bounds]
        )
    cases = sum(stop - start for start, stop in bounds)
    ran = sum(count for count, _ in results)
    bad = [line for _, lines in results for line in lines]
    assert cases == SLOW_COUNT and ran == SLOW_COUNT + SLOW_COUNT // 10
    assert not bad, f"{len(bad)} bad outcomes, the first:\n" + "\n".join(bad[:20])
