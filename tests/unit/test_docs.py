"""The documentation site cannot drift from the code: the generated reference pages
(docs/reference/, written by scripts/gen-docs) are what the schema and the click commands say
today, every key of the schema has a description, and every `shipit.yml` in the docs is a
spec that `shipit validate` accepts, unless the line before it marks it
`<!-- fragment -->` (a part of a spec, shown alone)."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipit.cli import main

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GEN: dict[str, Any] = runpy.run_path(str(ROOT / "scripts" / "gen-docs"))
FRAGMENT = "<!-- fragment -->"
# the top-level keys of a spec, and those of a CI file (never a spec)
SPEC_KEYS = {"version", "registries", "image", "images", "scan", "sign", "push", "retention"}


@pytest.mark.parametrize("name", sorted(GEN["PAGES"]))
def test_the_generated_reference_is_fresh(name: str) -> None:
    # made in a fresh interpreter, as `scripts/gen-docs` makes it: in this one, click keeps
    # each command's help option from the first context that asked (another test's, made
    # without the group's `-h, --help`), and the page would depend on the tests before it
    script = (
        "import runpy, sys; pages = runpy.run_path(sys.argv[1])['PAGES'];"
        " sys.stdout.write(pages[sys.argv[2]]())"
    )
    made = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "scripts" / "gen-docs"), name],
        capture_output=True, text=True, timeout=120, check=True, cwd=ROOT,
    )  # fmt: skip
    committed = (DOCS / "reference" / name).read_text(encoding="utf-8")
    assert committed == made.stdout, f"docs/reference/{name} is stale: run scripts/gen-docs"


def test_every_key_of_the_schema_has_a_description() -> None:
    assert GEN["undescribed_keys"](GEN["load_schema"]()) == []


def spec_blocks() -> list[tuple[str, str, bool]]:
    """(where, text, fragment) for every YAML block of the docs that is a shipit.yml."""
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r"```ya?ml\n(.*?)^```", text, flags=re.M | re.S):
            body = match[1]
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            try:
                document = yaml.safe_load(body)
            except yaml.YAMLError:
                document = None  # side-by-side tables and templates: not a spec
            if not isinstance(document, dict) or not set(document) & SPEC_KEYS:
                continue
            if {"jobs", "stages", "include", "on", "script", "variables"} & set(document):
                continue
            line = text[: match.start()].count("\n") + 2
            where = f"{page.relative_to(ROOT)}:{line}"
            found.append((where, body, FRAGMENT in before))
    return found


def make_files(root: Path, node: Any, dockerfile: str = "Dockerfile") -> None:
    """The build contexts and files a spec names, as the repository it came from holds them."""
    if isinstance(node, list):
        for item in node:
            make_files(root, item, dockerfile)
    if not isinstance(node, dict):
        return
    dockerfile = str(node.get("dockerfile", dockerfile))
    for key, value in node.items():
        if key == "context" and isinstance(value, str):
            (root / value).mkdir(parents=True, exist_ok=True)
            (root / value / dockerfile).write_text("FROM scratch\n", encoding="utf-8")
        elif key in {"ca_file", "ignorefile", "signing_config", "trusted_root"} and isinstance(
            value, str
        ):
            (root / value).parent.mkdir(parents=True, exist_ok=True)
            (root / value).touch()
        else:
            make_files(root, value, dockerfile)


def test_the_docs_have_specs() -> None:
    blocks = spec_blocks()
    assert len([b for b in blocks if not b[2]]) >= 3


@pytest.mark.parametrize(
    ("where", "body"), [(w, b) for w, b, fragment in spec_blocks() if not fragment]
)
def test_every_spec_in_the_docs_validates(
    where: str, body: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "shipit.yml").write_text(body, encoding="utf-8")
    (tmp_path / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    make_files(tmp_path, yaml.safe_load(body))
    # the variables a snippet reads from CI (GITHUB_ACTOR...) as a job would have them
    names = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", body)
    env = {"PATH": os.environ["PATH"], **dict.fromkeys(names, "example")}
    code = main(["validate", "-C", str(tmp_path)], env=env)
    out, err = capsys.readouterr()
    assert code == 0, f"{where}: {err}"
    assert "valid (" in out


def test_the_docs_show_the_root_spec_as_it_is() -> None:
    """docs/ci.md quotes shipit's own shipit.yml whole: the example of a real project's spec."""
    root = (ROOT / "shipit.yml").read_text(encoding="utf-8")
    assert f"```yaml\n{root}```" in (DOCS / "ci.md").read_text(encoding="utf-8")
