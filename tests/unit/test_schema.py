"""The packaged JSON Schema agrees with the parser: on the examples and on broken specs."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from shipit.app import schema_text
from shipit.errors import SpecError
from shipit.spec import parse

ROOT = Path(__file__).parent.parent.parent
EXAMPLES = sorted(ROOT.glob("examples/**/shipit.yml"))
SCHEMA = json.loads(schema_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())

VALID = [
    "version: 1\nregistries: [a.io/b]\nimage: {name: app}\n",
    "version: 1\nregistries: [{url: a.io/b, username: u, password_env: T, insecure: true}]\n"
    "images: [{name: a, tags: [{type: sha, length: 8}, {type: match, pattern: 'v(.*)', group: 1}]}]\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nscan: false\nsign: {format: legacy, tlog: false}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nsign: {provenance: max}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nsign: {provenance: false}\n",
    "version: 1\nx-anchor: {a: 1}\nregistries: [a.io/b]\nimage: {name: a, flavor: {latest: false, floating: always}}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nscan: {fail_on: never, scanners: secret, timeout: 5m}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nsign: {key: env://K, signing_config: sc.json, trusted_root: tr.json, timeout: 90}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nsign: {key: env://K, rekor_url: 'https://rekor.example.com', timeout: 1h30m}\n",
]
VALID += [
    "version: 1\nregistries: [a.io/b]\nengine: buildx\nplatforms: [linux/amd64, linux/arm64]\n"
    "image: {name: a, secrets: {tok: {env: TOK}, rc: {file: .netrc}}, ssh: [default],"
    " cache_to: [type=inline], network: none, no_cache: true, builder: farm}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a, platform: linux/arm64/v8}\n",
    "version: 1\nregistries: [a.io/b]\nengine: buildah\nisolation: oci\n"
    "image: {name: a, secrets: {tok: {env: TOK}}, cache_to: [a.io/b/cache], network: none}\n",
]
INVALID = [
    "version: 1\nregistries: [a.io/b]\nimage: {name: a, engine: kaniko}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a, platforms: []}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a, platforms: [amd64]}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a, engine: buildx, secrets: {t: s3cret}}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a, engine: buildx, secrets: {t: {value: x}}}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a, network: bridge}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a, engine: buildah, isolation: vm}\n",
    "registries: [a.io/b]\nimage: {name: app}\n",  # no version
    "version: 2\nregistries: [a.io/b]\nimage: {name: app}\n",
    "version: 1\nregistries: [a.io/b]\n",  # no image
    "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nimages: [{name: b}]\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a, colour: blue}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {}\n",
    "version: 1\nregistries: [https://a.io/b]\nimage: {name: a}\n",
    "version: 1\nregistries: [{url: a.io/b, password_env: 'not a name', username: u}]\nimage: {name: a}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a, tags: [{type: sha, pattern: x}]}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a, tags: [{type: ref}]}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a, tags: [{type: raw}]}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a, tags: [{type: color}]}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nscan: {fail_on: SEVERE}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nscan: {scanners: [viruses]}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nsign: {format: pgp}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nsign: {timeout: 0}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nsign: {timeout: 0m0s}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nsign: {timeout: soon}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nsign: {rekor_url: rekor.example.com}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nsign: {signing_config: sc.json, rekor_url: 'https://r.example'}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nsign: {signing_config: sc.json, format: legacy}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a}\nsign: {provenance: full}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a}\npush: {parallel: 0}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a}\npush: {retries: 11}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a, platform: amd64}\n",
    "version: 1\nregistries: []\nimage: {name: a}\n",
    "version: 1\nregistries: [a.io/b]\nimage: {name: a, release: {}}\n",
]


def schema_accepts(text: str) -> bool:
    return VALIDATOR.is_valid(yaml.safe_load(text))


def parser_accepts(text: str, root: Path) -> bool:
    try:
        parse(text, root / "shipit.yml", {})
    except SpecError:
        return False
    return True


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    (tmp_path / "sc.json").write_text("{}", encoding="utf-8")  # sign.signing_config
    (tmp_path / "tr.json").write_text("{}", encoding="utf-8")  # sign.trusted_root
    return tmp_path


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_there_are_examples() -> None:
    assert EXAMPLES, "examples/*/shipit.yml"


@pytest.mark.parametrize(
    "example", EXAMPLES, ids=[str(p.parent.relative_to(ROOT)) for p in EXAMPLES]
)
def test_every_example_is_valid_for_both(example: Path) -> None:
    text = example.read_text(encoding="utf-8")
    errors = [e.message for e in VALIDATOR.iter_errors(yaml.safe_load(text))]
    assert errors == []
    parse(text, example, {})


@pytest.mark.parametrize("text", VALID)
def test_valid_specs_pass_both(text: str, root: Path) -> None:
    assert schema_accepts(text)
    assert parser_accepts(text, root)


@pytest.mark.parametrize("text", INVALID)
def test_invalid_specs_fail_both(text: str, root: Path) -> None:
    assert not schema_accepts(text)
    assert not parser_accepts(text, root)
