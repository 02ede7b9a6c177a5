"""docker/metadata-action's own cases (tests/data/metadata_action_corpus.yaml), through
`shipit init --from` a workflow with each case's inputs, then `shipit tags` under the same
event, ref, SHA and clock (SOURCE_DATE_EPOCH), in-process."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipit.cli import main

DATA = Path(__file__).parent.parent / "data" / "metadata_action_corpus.yaml"
CORPUS: dict[str, Any] = yaml.safe_load(DATA.read_text(encoding="utf-8"))
CASES: list[dict[str, Any]] = CORPUS["cases"]
RUN = [c for c in CASES if "skip" not in c]
# Every case that publishes other tags than metadata-action, and why (docs/tags.md lists them).
DIFFERENT: dict[str, str] = {
    "push/push17": "shipit drops a trailing '-' (mytag-tag-, mytag-baseref- from empty values)",
    "release/release02": "shipit drops a trailing '-' (baseref- from an empty {{base_ref}})",
}
EPOCH = str(int(datetime.fromisoformat(CORPUS["clock"].replace("Z", "+00:00")).timestamp()))


def workflow(case: dict[str, Any]) -> str:
    inputs = case["inputs"]
    given: dict[str, str] = {"images": "\n".join(inputs["images"]) + "\n"}
    for key, name in (("tags", "tags"), ("flavor", "flavor")):
        if inputs.get(key):
            given[name] = "\n".join(inputs[key]) + "\n"
    if "sepTags" in inputs:
        given["sep-tags"] = inputs["sepTags"]
    meta: dict[str, Any] = {"id": "meta", "uses": "docker/metadata-action@v5", "with": given}
    if case.get("env"):
        meta["env"] = case["env"]
    build = {
        "uses": "docker/build-push-action@v6",
        "with": {"context": ".", "push": True, "tags": "${{ steps.meta.outputs.tags }}"},
    }
    document = {
        "on": [case["event_name"]],
        "jobs": {
            "docker": {
                "runs-on": "ubuntu-latest",
                "steps": [{"uses": "actions/checkout@v4"}, meta, build],
            }
        },
    }
    return yaml.safe_dump(document, sort_keys=False)


def github_env(case: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    payload: dict[str, Any] = {"repository": {"default_branch": CORPUS["default_branch"]}}
    if "pr" in case:
        payload["number"] = case["pr"]
        payload["pull_request"] = {"number": case["pr"], "head": {"sha": case["pr_head_sha"]}}
    event = tmp_path / "event.json"
    event.write_text(json.dumps(payload), encoding="utf-8")
    return {
        "GITHUB_ACTIONS": "true",
        "GITHUB_EVENT_NAME": case["event_name"],
        "GITHUB_EVENT_PATH": str(event),
        "GITHUB_REF": case["ref"],
        "GITHUB_SHA": case["sha"],
        "GITHUB_BASE_REF": case.get("base_ref", ""),
        "GITHUB_HEAD_REF": case.get("head_ref", ""),
        "SOURCE_DATE_EPOCH": EPOCH,
        **case.get("env", {}),
    }


def expected(refs: list[str]) -> set[str]:
    out = set()
    for ref in refs:
        first = ref.split("/")[0]
        hub = "." not in first and ":" not in first and first != "localhost"
        out.add(f"docker.io/{ref}" if hub else ref)
    return out


def published(case: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> set[str]:
    repo = tmp_path / "repo"
    (repo / ".github" / "workflows").mkdir(parents=True)
    (repo / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    source = repo / ".github" / "workflows" / "docker.yml"
    source.write_text(workflow(case), encoding="utf-8")
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    code = main(["init", "--from", str(source), "-C", str(repo)], env=base)
    _, err = capsys.readouterr()
    assert code == 0, err
    code = main(["tags", "--json", "-C", str(repo)], env={**base, **github_env(case, tmp_path)})
    out, err = capsys.readouterr()
    assert code == 0, err
    return {ref for image in json.loads(out)["images"] for ref in image["refs"]}


@pytest.mark.parametrize("case", RUN, ids=[c["id"] for c in RUN])
def test_metadata_action_case(
    case: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    got = published(case, tmp_path, capsys)
    want = expected(case["expect"])
    if case["id"] in DIFFERENT:
        assert got != want, f"{case['id']} is equal now: take it off DIFFERENT"
    else:
        assert got == want


def test_the_corpus_is_all_there() -> None:
    assert len(CASES) == 131
    assert len({c["id"] for c in CASES}) == len(CASES)
    assert set(DIFFERENT) <= {c["id"] for c in RUN}
    assert (len(RUN) - len(DIFFERENT)) / len(RUN) >= 0.95
