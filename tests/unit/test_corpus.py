"""The shared tag corpus (tests/data/corpus_tags.yaml), each case in a real git repository,
run through `shipit tags --json` in-process."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipit.cli import main
from tests.support.gitrepo import git, make_repo

DATA = Path(__file__).parent.parent / "data"
CORPUS: list[dict[str, Any]] = yaml.safe_load(
    (DATA / "corpus_tags.yaml").read_text(encoding="utf-8")
)
OURS: list[dict[str, Any]] = yaml.safe_load((DATA / "more_tags.yaml").read_text(encoding="utf-8"))
CASES = CORPUS + OURS


def _substitute(text: str, sha: str) -> str:
    return text.replace("{sha40}", sha).replace("{sha8}", sha[:8]).replace("{sha7}", sha[:7])


def run_case(
    case: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[dict[str, Any], str]:
    repo = tmp_path / "repo"
    kwargs = {"commit_date": case["commit_date"]} if "commit_date" in case else {}
    make_repo(repo, case["repo"], branch=case["branch"], **kwargs)
    sha = git(repo, "rev-parse", "HEAD")
    image = {"name": "app", **case.get("spec", {})}
    spec = {"version": 1, "registries": ["r.example/o"], "image": image}
    (repo / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    (repo / "shipit.yml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    env.update({k: _substitute(v, sha) for k, v in case.get("env", {}).items()})
    if "event" in case:
        event_path = tmp_path / "event.json"
        event_path.write_text(_substitute(json.dumps(case["event"]), sha), encoding="utf-8")
        env["GITHUB_EVENT_PATH"] = str(event_path)
    code = main(["tags", "--json", "-C", str(repo), *case.get("args", [])], env=env)
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out), sha


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_corpus_case(
    case: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document, sha = run_case(case, tmp_path, capsys)
    [image] = document["images"]
    expected = {_substitute(tag, sha) for tag in case["expect"]}
    assert set(image["tags"]) == expected
    assert len(image["tags"]) == len(expected), "tags are listed once each"
    assert image["refs"] == [f"r.example/o/app:{tag}" for tag in image["tags"]]
    if "expect_version" in case:
        assert document["version"] == _substitute(case["expect_version"], sha)


def test_corpus_is_all_there() -> None:
    assert len(CORPUS) == 15
    assert len({c["id"] for c in CASES}) == len(CASES)
