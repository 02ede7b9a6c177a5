"""The GitLab CI files the project ships are valid GitLab CI (GitLab's own JSON Schema, as
check-jsonschema bundles it), and the template installs the version of shipit it ships with."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from shipit import __version__
from tests.support.services import tool_path

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / ".gitlab-ci-template.yml"
CI_FILES = [TEMPLATE, *sorted(REPO.glob("examples/*/.gitlab-ci.yml"))]

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("path", CI_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_gitlab_ci_file_matches_gitlabs_schema(path: Path) -> None:
    done = subprocess.run(
        [tool_path("check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci", str(path)],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_there_is_an_example_using_the_include() -> None:
    examples = [p for p in CI_FILES if p != TEMPLATE]
    assert examples, "no examples/*/.gitlab-ci.yml"
    for path in examples:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert config.get("include"), f"{path} does not include the template"


def test_the_template_installs_the_released_version_by_default() -> None:
    text = TEMPLATE.read_text(encoding="utf-8")
    defaults = re.findall(r"SHIPIT_PIP_SPEC:=([^}\"]+)", text)
    assert defaults == [f"shipit=={__version__}"]
    config = yaml.safe_load(text)
    assert config["shipit"]["extends"] == ".shipit"
    hidden = config[".shipit"]
    assert hidden["id_tokens"] == {"SIGSTORE_ID_TOKEN": {"aud": "sigstore"}}
    assert hidden["artifacts"]["when"] == "always"
    assert hidden["artifacts"]["reports"]["dotenv"] == "shipit.env"
    assert "shipit-report.json" in hidden["artifacts"]["paths"]
    # the job token is read from the environment, never expanded on a command line
    assert "$CI_REGISTRY_PASSWORD" not in text and "${CI_REGISTRY_PASSWORD" not in text
