"""The pure part of distributed builds: a leg's plan, the leg document, the merge's checks
of legs against the plan, and `shipit matrix --by platform`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from shipit import legs, matrix
from shipit.context import GitFacts, History, Overrides, resolve
from shipit.errors import UsageError
from shipit.legs import Leg, LegsRefused, LegTarget
from shipit.plan import Plan, make_plan
from shipit.spec import parse
from tests.conftest import write
from tests.support.cli import run_shipit
from tests.support.gitrepo import make_repo

SHA = "1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d"
OTHER = "9" * 40
DIGESTS = {"linux/amd64": "sha256:" + "a" * 64, "linux/arm64": "sha256:" + "b" * 64}
SPEC = """\
version: 1
registries: [ghcr.io/acme, registry.example:5000/team]
images:
  - name: api
    platforms: [linux/amd64, linux/arm64]
    sign: {key: env://COSIGN_KEY}
  - name: web
    platforms: [linux/arm/v7]
"""


@pytest.fixture
def plan(tmp_path: Path) -> Plan:
    write(tmp_path / "Dockerfile", "FROM scratch\n")
    facts = GitFacts(
        head=SHA,
        branch="main",
        commit_time=datetime(2024, 2, 29, tzinfo=UTC),
        history=History(head=SHA, parents={SHA: ()}),
    )
    ctx = resolve(facts, {}, Overrides())
    return make_plan(parse(SPEC, tmp_path / "shipit.yml", {}), ctx)


def leg(platform: str, *, image: str = "api", **changes: Any) -> Leg:
    fields: dict[str, Any] = {
        "image": image,
        "platform": platform,
        "commit": SHA,
        "version": "0.0.0-dev.1+g1a2b3c4",
        "status": "success",
        "digest": DIGESTS.get(platform, "sha256:" + "c" * 64),
        "media_type": "application/vnd.oci.image.manifest.v1+json",
        "size": 1234,
        "registries": (
            LegTarget(
                registry="ghcr.io/acme",
                repository="ghcr.io/acme/api",
                digest=DIGESTS.get(platform),
                size=1234,
            ),
        ),
        "source": f"{platform.replace('/', '-')}.json",
    }
    fields.update(changes)
    return Leg(**fields)


# -- a leg's plan --------------------------------------------------------------------------


def test_a_leg_plan_is_one_image_one_platform_no_signature(plan: Plan) -> None:
    only = plan.images[:1]
    narrowed = legs.leg_plan(
        Plan(spec=plan.spec, context=plan.context, images=only), platform="linux/arm64", record=True
    )
    [image] = narrowed.images
    assert image.build.platforms == ("linux/arm64",)
    assert "sign" not in image.stages and "push" in image.stages
    assert image.leg is not None
    assert image.leg.platforms == ("linux/amd64", "linux/arm64") and image.leg.record
    assert image.to_json()["leg"] == {
        "platform": "linux/arm64",
        "platforms": ["linux/amd64", "linux/arm64"],
        "record": True,
    }
    assert image.tags == plan.images[0].tags  # what the merge will tag, shown in the plan


def test_a_leg_needs_one_image_and_a_platform_it_lists(plan: Plan) -> None:
    with pytest.raises(UsageError, match=r"name it with --image \(this spec has api, web\)"):
        legs.leg_plan(plan, platform="linux/arm64", record=False)
    one = Plan(spec=plan.spec, context=plan.context, images=plan.images[:1])
    with pytest.raises(
        UsageError, match=r"does not list linux/s390x .* lists linux/amd64, linux/arm64"
    ):
        legs.leg_plan(one, platform="linux/s390x", record=False)


def test_an_image_without_platforms_has_no_legs(tmp_path: Path) -> None:
    write(tmp_path / "Dockerfile", "FROM scratch\n")
    ctx = resolve(GitFacts(head=SHA, history=History(head=SHA, parents={SHA: ()})), {}, Overrides())
    spec = parse(
        "version: 1\nregistries: [r.example]\nimage: {name: solo}\n", tmp_path / "s.yml", {}
    )
    plan = make_plan(spec, ctx)
    with pytest.raises(UsageError, match="lists no platforms"):
        legs.leg_plan(plan, platform="linux/amd64", record=False)
    with pytest.raises(UsageError, match="image solo lists no platforms"):
        matrix.document(plan, by="platform")


def test_record_tags_keep_commits_versions_and_platforms_apart() -> None:
    tag = legs.record_tag(SHA, "1.4.4-dev.7+g1a2b3c4", "linux/arm64/v8")
    assert tag == "shipit-leg-1a2b3c4d5e6f-linux-arm64-v8-1.4.4-dev.7-g1a2b3c4"
    assert legs.record_tag(SHA, "1.4.3", "linux/arm64") != legs.record_tag(
        SHA, "1.4.4-dev.0+g1a2b3c4", "linux/arm64"
    )
    long = legs.record_tag(SHA, "1.0.0-" + "x" * 200, "linux/amd64")
    assert len(long) == 128 and long.startswith("shipit-leg-1a2b3c4d5e6f-linux-amd64-1.0.0-x")


# -- the document --------------------------------------------------------------------------


def test_the_document_round_trips() -> None:
    original = leg(
        "linux/arm64",
        scan=legs.LegScan(counts={"HIGH": 0, "CRITICAL": 1}, blocked=False, expired_ignores=("X",)),
    )
    document = json.loads(json.dumps(original.to_json()))
    assert document["schema"] == 1 and document["kind"] == "shipit-leg"
    again = Leg.from_json(document, "again.json")
    assert again == original  # the source is not compared
    assert again.source == "again.json"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "something"}, "is not a leg document"),
        ({"schema": 2}, "has schema 2; this shipit reads schema 1"),
        ({"digest": "sha256:short"}, "digest 'sha256:short' is not valid"),
        ({"commit": "not-hex"}, "commit 'not-hex' is not valid"),
        ({"platform": "amd64"}, "platform 'amd64' is not valid"),
        ({"status": "great"}, "status is 'great', not one of"),
        ({"size": -1}, "size is not a size in bytes"),
        ({"registries": {}}, "registries is not a list"),
        ({"scan": {"counts": {"HIGH": "many"}}}, "scan.counts is not a table of counts"),
    ],
)
def test_a_bad_document_says_what_is_wrong(change: dict[str, Any], message: str) -> None:
    document = {**leg("linux/amd64").to_json(), **change}
    with pytest.raises(ValueError, match=message) as caught:
        Leg.from_json(document, "bad.json")
    assert "bad.json" in str(caught.value)


# -- the merge's checks --------------------------------------------------------------------


def test_every_planned_platform_has_its_leg(plan: Plan) -> None:
    found = [leg("linux/arm64"), leg("linux/amd64"), leg("linux/arm/v7", image="web")]
    chosen = legs.match(plan.images, found, SHA)
    assert list(chosen["api"]) == ["linux/amd64", "linux/arm64"]  # the planned order
    assert chosen["web"]["linux/arm/v7"].image == "web"


def test_every_problem_is_named_at_once(plan: Plan) -> None:
    found = [
        leg("linux/amd64"),
        leg("linux/amd64", source="again.json"),  # twice
        leg("linux/arm/v7", image="web", commit=OTHER),  # another commit
        leg("linux/s390x"),  # a platform api does not list
        leg("linux/amd64", image="db"),  # an image the merge does not build
    ]
    with pytest.raises(LegsRefused) as caught:
        legs.match(plan.images, found, SHA)
    problems = caught.value.problems
    assert problems == (
        "image api linux/amd64 has two legs: linux-amd64.json and again.json",
        f"linux-arm-v7.json was built from commit {OTHER[:12]}, not {SHA[:12]} (this one)",
        "linux-s390x.json is a leg of linux/s390x, which image api does not list"
        " (it lists linux/amd64, linux/arm64)",
        "linux-amd64.json is a leg of image db, which this merge does not build",
        "image api: no leg for linux/arm64",
        "image web: no leg for linux/arm/v7",
    )
    assert "nothing was tagged" in str(caught.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": "9.9.9"}, r"is of version 9\.9\.9, not 0\.0\.0-dev\.1\+g1a2b3c4"),
        ({"status": "blocked", "error": "the gate"}, "did not succeed .blocked: the gate."),
        ({"digest": None}, "pushed nothing"),
    ],
)
def test_a_leg_of_another_version_failed_or_unpushed_is_refused(
    plan: Plan, change: dict[str, Any], message: str
) -> None:
    found = [leg("linux/amd64"), leg("linux/arm64", **change)]
    with pytest.raises(LegsRefused, match=message):
        legs.match(plan.images[:1], found, SHA)


def test_sbom_attestations_are_refused_for_legs(tmp_path: Path) -> None:
    write(tmp_path / "Dockerfile", "FROM scratch\n")
    spec = SPEC.replace(
        "sign: {key: env://COSIGN_KEY}",
        "sign: {key: env://COSIGN_KEY, attest_sbom: true}\n    scan: {sbom: cyclonedx}",
    )
    ctx = resolve(GitFacts(head=SHA, history=History(head=SHA, parents={SHA: ()})), {}, Overrides())
    plan = make_plan(parse(spec, tmp_path / "shipit.yml", {}), ctx, only="api")
    with pytest.raises(UsageError, match="attest_sbom cannot be used with legs"):
        legs.leg_plan(plan, platform="linux/amd64", record=False)


# -- shipit matrix --by platform -----------------------------------------------------------


def test_the_platform_matrix_has_a_runner_label_per_entry(plan: Plan) -> None:
    document = matrix.document(plan, by="platform")
    assert [(e["image"], e["platform"], e["os"], e["arch"]) for e in document["include"]] == [
        ("api", "linux/amd64", "linux", "amd64"),
        ("api", "linux/arm64", "linux", "arm64"),
        ("web", "linux/arm/v7", "linux", "arm-v7"),
    ]
    assert all(e["version"] == "0.0.0-dev.1+g1a2b3c4" for e in document["include"])
    snippet = matrix.gitlab_snippet(document, by="platform")
    assert yaml.safe_load(snippet)["parallel"]["matrix"] == [
        {"SHIPIT_IMAGE": "api", "SHIPIT_PLATFORM": "linux/amd64", "SHIPIT_ARCH": "amd64"},
        {"SHIPIT_IMAGE": "api", "SHIPIT_PLATFORM": "linux/arm64", "SHIPIT_ARCH": "arm64"},
        {"SHIPIT_IMAGE": "web", "SHIPIT_PLATFORM": "linux/arm/v7", "SHIPIT_ARCH": "arm-v7"},
    ]


# -- the command line ----------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    make_repo(root, [{}], branch="main")
    write(root / "Dockerfile", "FROM scratch\n")
    write(root / "shipit.yml", SPEC)
    return root


def test_leg_options_go_together(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_shipit(["run", "-C", str(repo), "--platform", "linux/arm64"], capsys)
    assert code == 2 and "--platform and --leg-record go with --leg" in err
    code, _, err = run_shipit(["run", "-C", str(repo), "--leg"], capsys)
    assert code == 2 and "--leg needs --platform" in err
    code, out, err = run_shipit(
        ["run", "-C", str(repo), "--image", "api", "--leg", "--platform", "linux/arm64",
         "--dry-run", "--json"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    [image] = json.loads(out)["images"]
    assert image["build"]["platforms"] == ["linux/arm64"] and "sign" not in image["stages"]


def test_merge_reads_leg_files_and_folders(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_shipit(["merge", "-C", str(repo), str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "no such file or folder" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "other.json").write_text('{"not": "a leg"}')
    code, _, err = run_shipit(["merge", "-C", str(repo), str(empty)], capsys)
    assert code == 2 and f"no leg document in {empty}" in err
    code, _, err = run_shipit(["merge", "-C", str(repo), "--skip", "push"], capsys)
    assert code == 2 and "a merge can leave out the sign stage only" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, _, err = run_shipit(["merge", "-C", str(repo), str(bad)], capsys)
    assert code == 2 and f"{bad}: not a readable JSON document" in err
    assert "Traceback" not in err


def test_matrix_by_platform_on_the_command_line(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_shipit(["matrix", "-C", str(repo), "--by", "platform"], capsys)
    assert code == 0, err
    assert [e["arch"] for e in json.loads(out)["include"]] == ["amd64", "arm64", "arm-v7"]
    code, out, err = run_shipit(
        ["matrix", "-C", str(repo), "--by", "platform", "--format", "gitlab"], capsys
    )
    assert code == 0, err
    assert "tags: [saas-linux-small-$SHIPIT_ARCH]" in out
