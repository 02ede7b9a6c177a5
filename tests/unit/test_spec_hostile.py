"""Hostile specs, one of each kind that once ended in "internal error": through the real
command line (`shipit validate` and `shipit plan`), each is exit 2 with a located message.

The fuzzer (test_spec_fuzz.py) finds such inputs at random; these pin each class down with
one example and the message a person gets.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.cli import run_shipit
from tests.support.gitrepo import make_repo

BASE = "version: 1\nregistries: [r.example/o]\nimage:\n  name: app\n"
LONG = "a" * 5000
LONG_NAME = "a" * 300  # a short path, but one component longer than NAME_MAX
LOCATED = re.compile(r"^\S*shipit\.yml:(\d+):(\d+): (.+)$")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    make_repo(root, [{"tag": "v1.0.0"}])
    (root / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    return root


def located(repo: Path, spec: str | bytes, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The located problems of `shipit validate` and `shipit plan` (they must agree)."""
    path = repo / "shipit.yml"
    if isinstance(spec, bytes):
        path.write_bytes(spec)
    else:
        path.write_text(spec, encoding="utf-8")
    found: list[list[str]] = []
    for command in (["validate"], ["plan", "--json"]):
        code, _, err = run_shipit([*command, "-C", str(repo)], capsys, {"HOME": str(repo)})
        assert code == 2, f"{command}: exit {code}\n{err}"
        assert "internal error" not in err and "Traceback" not in err, err
        lines = err.splitlines()
        assert lines[-1].startswith("shipit: ") and lines[-1].endswith("in the spec"), err
        problems = [f"{m[1]}:{m[2]}: {m[3]}" for line in lines[:-1] if (m := LOCATED.match(line))]
        assert len(problems) == len(lines) - 1, f"a line that is not FILE:LINE:COL:\n{err}"
        found.append(problems)
    assert found[0] == found[1]
    return found[0]


PATH_FIELDS = {
    "context": ("  context: {}\n", "build context"),
    "dockerfile": ("  dockerfile: {}\n", "dockerfile"),
    "ignorefile": ("scan: {{ignorefile: {}}}\n", "ignorefile"),
    "reports": ("scan: {{reports: {{sarif: {}}}}}\n", "reports.sarif"),
    "cache_dir": ("scan: {{cache_dir: {}}}\n", "cache_dir"),
    "key": ("sign: {{key: {}}}\n", "key"),
    "ca_file": ("registries: [{{url: r.example/o, ca_file: {}}}]\n", "ca_file"),
    "secret file": ("  engine: buildx\n  secrets: {{s: {{file: {}}}}}\n", "secret s file"),
}
BAD_PATHS = {
    "5000 characters": (LONG, "is 5000 bytes long; a path has at most 4095"),
    "a 300-byte name": (LONG_NAME, "has a name of 300 bytes; a file name has at most 255"),
    "a NUL byte": ('"a\\0b"', "contains a NUL character"),
    "a control character": ('"a\\x1bb"', "contains the control character U+001B"),
    "a newline": ('"a\\nb"', "contains the control character U+000A"),
}


@pytest.mark.parametrize("bad", BAD_PATHS, ids=list(BAD_PATHS))
@pytest.mark.parametrize("field", PATH_FIELDS, ids=list(PATH_FIELDS))
def test_every_path_field_refuses_what_no_system_call_takes(
    repo: Path, capsys: pytest.CaptureFixture[str], field: str, bad: str
) -> None:
    template, what = PATH_FIELDS[field]
    value, reason = BAD_PATHS[bad]
    spec = BASE + template.format(value)
    if field == "ca_file":  # the registry list replaces the top one
        spec = spec.replace("registries: [r.example/o]\n", "")
    [problem] = located(repo, spec, capsys)
    line = next(i for i, text in enumerate(spec.splitlines(), 1) if value[:3] in text)
    assert problem.startswith(f"{line}:"), problem
    assert f": {what} '" in problem and problem.endswith(reason), problem
    if value == LONG:  # the message quotes the start of the value, not all of it
        assert "(5000 characters)" in problem and len(problem) < 300


def test_a_path_through_a_symlink_loop_is_a_located_problem(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "loop").symlink_to(repo / "loop")
    [problem] = located(repo, BASE + "  context: loop/inside\n", capsys)
    assert problem.startswith("5:12: build context 'loop/inside' "), problem


def test_a_context_that_is_a_file_and_a_dockerfile_that_is_a_folder(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "sub").mkdir()
    (repo / "sub" / "Dockerfile").mkdir()
    assert located(repo, BASE + "  context: Dockerfile\n", capsys) == [
        "5:12: build context 'Dockerfile' is not a folder"
    ]
    [problem] = located(repo, BASE + "  context: sub\n", capsys)
    assert problem.startswith("4:3: no Dockerfile at 'Dockerfile' in context "), problem


@pytest.mark.parametrize(
    ("anchor", "merge", "expected"),
    [
        ("x-a: &a 1\n", "  <<: *a\n", "6:3: `<<` merges a mapping or a list of mappings"),
        ("x-a: &a\n", "  <<: *a\n", "6:3: `<<` merges a mapping or a list of mappings"),
        ("x-a: &a [1]\n", "  <<: *a\n", "6:3: `<<` merges a mapping or a list of mappings"),
        ("", "  <<:\n", "5:3: `<<` merges a mapping or a list of mappings"),
        ("x-a: &a {<<: *a}\n", "  <<: *a\n", "1:10: `<<` merges a mapping into itself"),
    ],
    ids=["scalar", "null", "list of scalars", "empty", "itself"],
)
def test_merge_keys_that_merge_no_mapping(
    repo: Path, capsys: pytest.CaptureFixture[str], anchor: str, merge: str, expected: str
) -> None:
    [problem] = located(repo, anchor + BASE + merge, capsys)
    assert problem.startswith(expected), problem


def test_anchors_merging_anchors_do_not_grow_exponentially(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # PyYAML's own flattening copies both halves at each level: 2**60 entries
    chain = "x-0: &a0 {registries: [r.example/o]}\n" + "".join(
        f"x-{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}]}}\n" for i in range(1, 61)
    )
    spec = chain + "version: 1\nimage: {<<: *a60, name: app, pull: maybe}\n"
    assert located(repo, spec, capsys) == ["63:36: pull must be true or false, not 'maybe'"]


def test_merge_keys_still_merge(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = (
        "x-one: &one {pull: maybe, target: t1}\n"
        "x-two: &two {target: [t2], labels: {a: b}}\n"
        + BASE
        + "  <<: [*one, *two]\n  pull: true\n  labels: x\n"
    )
    # the image's own keys win over merged ones; of two merged, the first wins
    assert located(repo, spec, capsys) == ["9:11: labels must be a mapping, not a string"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            BASE.encode() + b'  labels: {a: "caf\xe9"}\n',
            "5:19: the spec is not UTF-8 text (byte 0xe9 here)",
        ),
        (b"version: 1\n\xc3(\n", "2:1: the spec is not UTF-8 text (byte 0xc3 here)"),
        (
            (BASE + '  labels: {a: "\x07"}\n').encode(),
            "5:16: the character U+0007 is not allowed in YAML (write it as an escape)",
        ),
        (
            (BASE + '  labels: {a: "\x00"}\n').encode(),
            "5:16: the character U+0000 is not allowed in YAML (write it as an escape)",
        ),
        (
            (BASE + '  labels: {a: "\\ud800"}\n').encode(),
            "5:15: U+D800 is not a character (it has no UTF-8)",
        ),
        (BASE.encode() + b"#" + b"x" * (1024 * 1024) + b"\n", "1:1: the spec is too large"),
    ],
    ids=["latin-1", "cut sequence", "bell", "NUL", "lone surrogate", "over 1 MiB"],
)
def test_bytes_that_are_no_spec_text(
    repo: Path, capsys: pytest.CaptureFixture[str], text: bytes, expected: str
) -> None:
    [problem] = located(repo, text, capsys)
    assert problem.startswith(expected), problem


@pytest.mark.parametrize(
    "nested",
    [
        "labels: " + "[" * 5000 + "]" * 5000,
        "labels: " + "{a: " * 3000 + "1" + "}" * 3000,
        "labels:\n" + "".join("  " * (i + 2) + "a:\n" for i in range(200)),
        "labels: " + "[" * 65 + "]" * 65,
    ],
    ids=["flow lists", "flow maps", "block maps", "just too deep"],
)
def test_deep_nesting_is_a_located_problem(
    repo: Path, capsys: pytest.CaptureFixture[str], nested: str
) -> None:
    [problem] = located(repo, BASE + "  " + nested + "\n", capsys)
    assert re.fullmatch(r"\d+:\d+: nested deeper than 64 levels", problem), problem


def test_nesting_within_the_bound_is_read(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = BASE + "  labels: " + "[" * 60 + "]" * 60 + "\n"
    assert located(repo, spec, capsys) == ["5:11: labels must be a mapping, not a list"]


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("push: {parallel: 1e999}", "5:18: parallel must be a whole number, not '1e999'"),
        ("push: {parallel: .inf}", "5:18: parallel must be a whole number, not '.inf'"),
        ("push: {retries: 99999999999999999999}", "5:17: retries must be at most 10"),
        ("push: {retries: " + "9" * 5000 + "}", "5:17: retries must be a whole number of at"),
        ("push: {retries: 0x" + "f" * 5000 + "}", "5:17: retries must be a whole number of at"),
        ("push: {retries: '" + "9" * 5000 + "'}", "5:17: retries must be a whole number, not"),
        ("version: " + "1" * 5000, "4:10: version must be a whole number of at most 30"),
        ("tags: [{type: sha, length: " + "9" * 5000 + "}]", "5:28: length must be a whole"),
        ("tags: [{type: sha, priority: " + "9" * 5000 + "}]", "5:30: priority must be a whole"),
        ("scan: {timeout: " + "9" * 5000 + "}", "5:17: timeout '99999999"),
        ("scan: {timeout: 99999999h}", "5:17: timeout '99999999h' must be seconds"),
        ("scan: {timeout: 999999h}", "5:17: timeout '999999h' is longer than 168h"),
        ("scan: {timeout: '\u00b2'}", "5:17: timeout '\u00b2' must be seconds or a duration"),
        (
            "tags: [{type: match, pattern: '(a)', group: '" + "9" * 5000 + "'}]",
            "5:8: pattern has no group '9999",
        ),
        ("tags: [{type: match, pattern: '(a)', group: '\u00b2'}]", "5:8: pattern has no group"),
    ],
    ids=lambda value: value[:30],
)
def test_huge_and_odd_numbers(
    repo: Path, capsys: pytest.CaptureFixture[str], entry: str, expected: str
) -> None:
    spec = BASE + entry + "\n"
    if entry.startswith("version:"):
        spec = BASE.replace("version: 1\n", "") + entry + "\n"
    problems = located(repo, spec, capsys)
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("tag_pattern: '" + "(" * 2000 + ")" * 2000 + "'", "it nests too deeply"),
        ("tag_pattern: 'a{99999999999}'", "the repetition number is too large"),
    ],
    ids=["deep", "huge repeat"],
)
def test_regular_expressions_python_cannot_compile(
    repo: Path, capsys: pytest.CaptureFixture[str], entry: str, expected: str
) -> None:
    [problem] = located(repo, BASE + "  release: {" + entry + "}\n", capsys)
    assert problem.startswith("5:26: tag_pattern is not a valid regular expression: " + expected)


@pytest.mark.parametrize(
    "template",
    [
        "{{" + "(" * 2000 + "1" + ")" * 2000 + "}}",
        "{{ " + "-" * 5000 + "1 }}",
        "{{ 1" + "+1" * 3000 + " }}",
    ],
    ids=["parentheses", "signs", "sum"],
)
def test_templates_nested_too_deeply(
    repo: Path, capsys: pytest.CaptureFixture[str], template: str
) -> None:
    [problem] = located(repo, BASE + f'  labels: {{a: "{template}"}}\n', capsys)
    assert problem == "5:11: label 'a': the template nests expressions too deeply"


def test_a_spec_that_is_a_folder_or_a_bad_path(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "shipit.yml").mkdir()
    code, _, err = run_shipit(["validate", "-C", str(repo)], capsys)
    assert code == 2 and "shipit: error: the spec" in err and "is a folder, not a file" in err
    for bad in ("a\0b", "a" * 5000):
        for option in ("-f", "-C"):
            code, _, err = run_shipit(["validate", option, bad], capsys)
            assert code == 2 and err.startswith("shipit: error: "), err
            assert "internal error" not in err and len(err) < 400, err


def test_wrong_types_in_every_position(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # every key that takes a scalar gets a mapping, and every list or mapping a scalar
    spec = (
        "version: {a: 1}\n"
        "registries: [{url: {a: 1}, username: [1], password_env: {}, insecure: [], ca_file: {}}]\n"
        "tags: [{type: raw, value: [1], enable: {}, priority: [], prefix: {}, suffix: []}]\n"
        "flavor: {latest: [], prefix: {}, suffix: [], floating: {}}\n"
        "scan: {fail_on: [], scanners: {}, ignorefile: [], reports: [], timeout: {},"
        " cache_dir: [], sbom: {}, ignore_unfixed: [], skip_db_update: {}}\n"
        "sign: {key: [], format: {}, tlog: [], annotations: [], identity: {}}\n"
        "push: {parallel: [], retries: {}}\n"
        "image: {name: [], context: {}, dockerfile: [], target: {}, build_args: [],"
        " labels: 1, pull: [], platforms: {}, cache_from: {}, release: [], engine: []}\n"
    )
    problems = located(repo, spec, capsys)
    assert len(problems) >= 30, problems


@pytest.mark.parametrize("value", ["!!int x", "!!int ''", "!!bool x", "!!bool ''"], ids=lambda v: v)
def test_explicit_tags_pyyaml_cannot_read(
    repo: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    spec = BASE + f"  pull: {value}\npush: {{parallel: {value}}}\nflavor: {{latest: {value}}}\n"
    shown = value.split(" ", 1)[1].strip("'")
    assert located(repo, spec, capsys) == [
        f"5:9: pull must be true or false, not '{shown}'",
        f"6:18: parallel must be a whole number, not '{shown}'",
        f"7:18: latest must be one of auto, true, false, not '{shown}'",
    ]
