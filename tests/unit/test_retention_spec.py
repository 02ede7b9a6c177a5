"""The `retention:` section: parsing, merging, located errors, and the JSON Schema agreeing."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import jsonschema
import pytest
import yaml

from shipit.app import schema_text
from shipit.errors import SpecError
from shipit.spec import KeepRule, RetentionPolicy, Spec, parse

SCHEMA = jsonschema.Draft202012Validator(
    json.loads(schema_text()), format_checker=jsonschema.FormatChecker()
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    return tmp_path


def load(project: Path, text: str) -> Spec:
    return parse(textwrap.dedent(text), project / "shipit.yml", {})


def problems(project: Path, text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load(project, text)
    return [f"{p.location.line}:{p.location.column}: {p.message}" for p in info.value.problems]


HEAD = "version: 1\nregistries: [ghcr.io/acme]\n"


def test_a_spec_without_retention_prunes_nothing(project: Path) -> None:
    [image] = load(project, HEAD + "image: {name: app}\n").images
    assert image.retention is None


def test_every_rule_kind_is_read_with_its_text_for_reports(project: Path) -> None:
    spec = load(
        project,
        HEAD
        + """\
image: {name: app}
retention:
  keep:
    - {tags: '^v?\\d+\\.\\d+\\.\\d+$', newest: 20}
    - {semver: true, newest_per_minor: 3}
    - {newest_per_major: 2}
    - {tags: '^(main|edge)$'}
    - {tags: '^pr-', younger_than: 14d}
    - {younger_than: 1w2d12h}
  untagged: keep
""",
    )
    policy = spec.images[0].retention
    assert policy is not None and policy.untagged == "keep"
    first, per_minor, per_major, branches, prs, mixed = policy.keep
    assert (first.tags, first.newest, first.semver) == (r"^v?\d+\.\d+\.\d+$", 20, False)
    assert first.text == "{tags: '^v?\\d+\\.\\d+\\.\\d+$', newest: 20}"
    assert (per_minor.semver, per_minor.newest_per_minor) == (True, 3)
    assert per_major.semver and per_major.newest_per_major == 2  # counting versions implies semver
    assert branches.tags == "^(main|edge)$" and branches.newest is None
    assert prs.younger_than == 14 * 86400
    assert mixed.younger_than == 9 * 86400 + 12 * 3600
    assert per_minor.text == "{semver: true, newest_per_minor: 3}"


def test_the_top_level_policy_is_merged_into_each_image_and_false_turns_it_off(
    project: Path,
) -> None:
    spec = load(
        project,
        HEAD
        + """\
retention:
  keep: [{newest: 10}]
images:
  - {name: api}
  - {name: web, retention: {untagged: keep}}
  - {name: tools, retention: false}
  - {name: db, retention: {keep: [{semver: true}]}}
""",
    )
    policies = {i.name: i.retention for i in spec.images}
    newest = KeepRule(text="{newest: 10}", newest=10)
    assert policies["api"] == RetentionPolicy(keep=(newest,), untagged="delete")
    assert policies["web"] == RetentionPolicy(keep=(newest,), untagged="keep")
    assert policies["tools"] is None
    db = policies["db"]
    assert db is not None and [r.text for r in db.keep] == ["{semver: true}"]


BAD = [
    ("retention: {keep: [{tags: '(unclosed'}]}", "4:27: tags is not a valid regular expression"),
    ("retention: {keep: [{younger_than: 14}]}", "4:35: younger_than '14' must be a duration"),
    ("retention: {keep: [{younger_than: 2 weeks}]}", "younger_than '2 weeks' must be a duration"),
    ("retention: {keep: [{newest: 0}]}", "4:29: newest must be at least 1, not 0"),
    (
        "retention: {keep: [{newst: 3}]}",
        "unknown key 'newst' in a keep rule (did you mean 'newest'?)",
    ),
    ("retention: {keep: [{}]}", "4:20: a keep rule needs at least one of tags, semver"),
    ("retention: {keep: []}", "4:19: `keep` is empty"),
    ("retention: {untagged: keep}", "4:23: retention needs `keep:` rules"),
    ("retention:", "retention needs `keep:` rules"),
    ("retention: {keep: [{newest: 1}], untagged: maybe}", "untagged must be one of delete, keep"),
    (
        "retention: {keep: [{semver: false, newest_per_minor: 2}]}",
        "newest_per_minor counts semantic versions: it needs `semver: true`",
    ),
    ("retention: {keep: {newest: 1}}", "4:19: keep must be a list, not a mapping"),
]


@pytest.mark.parametrize(("text", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_policies_are_located_errors_and_the_schema_refuses_them_too(
    project: Path, text: str, message: str
) -> None:
    spec = HEAD + "image: {name: app}\n" + text + "\n"
    found = problems(project, spec)
    assert any(message in p for p in found), found
    # an `untagged:` alone may be completed by an image's `keep:`: only the parser can tell
    if "{untagged: keep}" not in text:
        assert not SCHEMA.is_valid(yaml.safe_load(spec))


def test_the_schema_takes_what_the_parser_takes(project: Path) -> None:
    spec = (
        HEAD
        + "image: {name: app, retention: {keep: [{semver: true, newest_per_minor: 3}]}}\n"
        + "retention: {keep: [{tags: '^pr-', younger_than: 14d}, {newest: 10}], untagged: delete}\n"
    )
    load(project, spec)
    assert SCHEMA.is_valid(yaml.safe_load(spec))


def readme_policies() -> list[str]:
    """The retention examples of docs/lifecycle.md."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "lifecycle.md").read_text(
        encoding="utf-8"
    )
    blocks = text.split("```yaml\n")[1:]
    return [b.split("```", 1)[0] for b in blocks if b.lstrip().startswith("retention:")]


def test_the_readme_has_retention_examples() -> None:
    assert len(readme_policies()) >= 4


@pytest.mark.parametrize("example", readme_policies())
def test_every_retention_example_in_the_readme_is_a_valid_spec(project: Path, example: str) -> None:
    image = "" if "images:" in example else "image: {name: app}\n"
    spec = HEAD + image + example
    policies = [i.retention for i in load(project, spec).images]
    assert any(p is not None for p in policies)
    assert SCHEMA.is_valid(yaml.safe_load(spec))
