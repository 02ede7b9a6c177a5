"""The pure parts of prune and promote: artifact tags, plan documents, times, deletion units,
referrers indexes, the table; and the command line's refusals that need no registry."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shipit.lifecycle.apply import _units
from shipit.lifecycle.copying import merged_index, referrers_index
from shipit.lifecycle.limit import DeleteLimit, refusals
from shipit.lifecycle.records import (
    Action,
    PrunePlan,
    RepositoryPlan,
    artifact_tags,
    parse_time,
    short_tag,
    tag_subject,
)
from shipit.lifecycle.report import plan_document, plan_table
from shipit.registry import OCI_INDEX, OCI_MANIFEST, Manifest, parse_referrers
from tests.support.cli import run_shipit

D = "sha256:" + "ab" * 32


def digest(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def test_artifact_tags_name_their_subject_and_kind() -> None:
    hexa = D.split(":")[1]
    assert tag_subject(f"sha256-{hexa}.sig") == (D, "signature")
    assert tag_subject(f"sha256-{hexa}.att") == (D, "attestation")
    assert tag_subject(f"sha256-{hexa}.sbom") == (D, "sbom")
    assert tag_subject(f"sha256-{hexa}") == (D, "referrers index")
    assert tag_subject(f"sha256-{hexa}.txt") is None
    assert tag_subject("sha256-abc.sig") is None and tag_subject("v1.2.3") is None
    assert artifact_tags(D) == tuple(f"sha256-{hexa}{s}" for s in ("", ".sig", ".att", ".sbom"))
    assert short_tag(f"sha256-{hexa}.sig") == f"sha256-{hexa[:12]}….sig"
    assert short_tag("latest") == "latest"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-01T12:00:00Z", datetime(2024, 3, 1, 12, tzinfo=UTC)),
        ("2024-03-01T12:00:00.123456789Z", datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        ("2024-03-01T14:00:00+02:00", datetime(2024, 3, 1, 12, tzinfo=UTC)),
        ("2024-03-01T12:00:00", datetime(2024, 3, 1, 12, tzinfo=UTC)),
        ("yesterday", None),
        ("", None),
        (None, None),
    ],
)
def test_times_from_configs_labels_and_plans(text: object, expected: datetime | None) -> None:
    assert parse_time(text) == expected


def plan_of(actions: tuple[Action, ...]) -> PrunePlan:
    repository = RepositoryPlan(
        image="app", registry="r.example/ns", host="r.example", repository="ns/app",
        tags={"v1": D}, actions=actions,
    )  # fmt: skip
    return PrunePlan(
        spec="shipit.yml", made=datetime(2026, 1, 2, tzinfo=UTC), repositories=(repository,)
    )


def test_a_plan_survives_its_json_and_refuses_other_documents() -> None:
    when = datetime(2025, 5, 4, 3, 2, 1, tzinfo=UTC)
    plan = plan_of(
        (Action(digest=D, tags=("v1",), kind="image", action="delete", rule="r", created=when),)
    )
    again = PrunePlan.from_json(json.loads(json.dumps(plan.to_json())))
    assert again == plan
    assert again.repositories[0].ref == "r.example/ns/app"
    with pytest.raises(ValueError, match="schema 1"):
        PrunePlan.from_json({"schema": 7, "repositories": []})
    with pytest.raises(ValueError, match="unknown action"):
        Action.from_json({"digest": D, "action": "shred"})


def action(name: str, kind: str, what: str, subject: str | None = None) -> Action:
    return Action(digest=digest(name), tags=(), kind=kind, action=what, rule="", subject=subject)


def test_deletions_are_grouped_under_their_image_top_first_and_untags_stand_alone() -> None:
    index = action("index", "index", "delete")
    child = action("child", "platform", "delete", subject=index.digest)
    referrers = action("referrers", "referrers index", "delete", subject=child.digest)
    bundle = action("bundle", "referrer", "delete", subject=child.digest)
    orphan = action("orphan", "signature", "delete", subject=digest("gone"))
    untag = Action(digest=digest("kept"), tags=("sha-1",), kind="tag", action="untag", rule="")
    other = action("other", "image", "delete")
    units = _units([index, child, referrers, bundle, orphan, untag, other])
    assert units == [[index, child, referrers, bundle], [orphan], [other], [untag]]


def bundle(subject: str, name: str) -> Manifest:
    document = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/x.test",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest("{}"), "size": 2},
        "layers": [], "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1},
        "annotations": {"name": name},
    }  # fmt: skip
    return Manifest.from_bytes(json.dumps(document).encode(), OCI_MANIFEST)


def test_a_referrers_index_lists_each_referrer_once_with_its_artifact_type() -> None:
    first, second = bundle(D, "one"), bundle(D, "two")
    index = referrers_index([first])
    assert index.media_type == OCI_INDEX
    [listed] = parse_referrers(index.data)
    assert (listed.digest, listed.size, listed.artifact_type) == (
        first.digest, len(first.data), "application/x.test",
    )  # fmt: skip
    merged = merged_index(index, referrers_index([first, second]))
    assert [r.digest for r in parse_referrers(merged.data)] == [first.digest, second.digest]


@pytest.mark.parametrize(
    "data",
    [b"not json", b'{"manifests": {}}', b'{"manifests": [{"digest": "md5:1", "size": 1}]}',
     b'{"manifests": [{"digest": "' + D.encode() + b'", "size": -1}]}'],
)  # fmt: skip
def test_unusable_referrers_indexes_are_errors(data: bytes) -> None:
    with pytest.raises(ValueError, match="referrer"):
        parse_referrers(data)


def test_the_dry_run_table_has_every_column_and_short_artifact_tags() -> None:
    hexa = D.split(":")[1]
    when = datetime(2026, 1, 1, tzinfo=UTC)
    rows = (
        Action(digest=D, tags=("1.0.0",), kind="image", action="keep", rule="keep #1 {semver: true}", created=when),
        Action(digest=D, tags=(f"sha256-{hexa}.sig",), kind="signature", action="delete", rule="gone"),
    )  # fmt: skip
    text = plan_table(plan_of(rows))
    header = text.splitlines()[0].split()
    assert header == ["registry", "repository", "digest", "tags", "created", "action", "rule"]
    assert "r.example/ns  ns/app" in text and D[:19] in text and "2026-01-01" in text
    assert f"sha256-{hexa[:12]}….sig" in text and hexa not in text
    assert "r.example/ns/app (r.example/ns): keep 1, delete 1, untag 0" in text
    assert text.endswith("dry run: nothing was changed; `shipit prune --apply` does it")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    (tmp_path / "shipit.yml").write_text(
        "version: 1\nregistries: [localhost:5999/ns]\nimage: {name: app}\n", encoding="utf-8"
    )
    return tmp_path


def test_the_commands_refuse_what_makes_no_sense_before_any_registry(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_shipit(["prune", "-C", str(project), "--plan", "x.json"], capsys)
    assert code == 2 and "--plan FILE is carried out with --apply" in err
    code, _, err = run_shipit(
        ["prune", "-C", str(project), "--apply", "--plan", "none.json"], capsys
    )
    assert code == 2 and "no plan at none.json" in err
    (project / "bad.json").write_text('{"schema": 1}', encoding="utf-8")
    code, _, err = run_shipit(
        ["prune", "-C", str(project), "--apply", "--plan", str(project / "bad.json")], capsys
    )
    assert code == 2 and "is not a prune plan" in err and "Traceback" not in err
    code, _, err = run_shipit(["promote", "-C", str(project), "localhost:5999/ns/app:1"], capsys)
    assert code == 2 and "promote needs at least one --to REGISTRY" in err
    code, _, err = run_shipit(
        ["promote", "-C", str(project), "elsewhere.example/app:1", "--to", "r.example"], capsys
    )
    assert code == 2 and "elsewhere.example/app is not an image of" in err
    assert "hint: promote one of: localhost:5999/ns/app" in err
    code, _, err = run_shipit(
        ["promote", "-C", str(project), "localhost:5999/ns/app", "--to", "r.example"], capsys
    )
    assert code == 2 and "names no tag and no digest" in err
    code, _, err = run_shipit(
        ["promote", "-C", str(project), "localhost:5999/ns/app:1", "--to", "https://r.example"],
        capsys,
    )
    assert code == 2 and "write a registry as HOST[:PORT][/NAMESPACE]" in err
    code, _, err = run_shipit(
        ["promote", "-C", str(project), "localhost:5999/ns/app:1", "--to", "localhost:5999/ns"],
        capsys,
    )
    assert code == 2 and "is where app comes from" in err


def test_a_spec_without_retention_prunes_nothing_and_says_so(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.gitrepo import make_repo

    make_repo(project)
    code, out, err = run_shipit(["prune", "-C", str(project)], capsys)
    assert code == 0, err
    assert "app: no retention policy, nothing to prune" in err
    assert "dry run: nothing was changed" in out


@pytest.mark.parametrize(
    ("host", "says"),
    [("ghcr.io", "GitHub's Packages REST API"), ("docker.io", "Docker Hub's API"),
     ("index.docker.io", "Docker Hub's API")],
)  # fmt: skip
def test_registries_that_delete_only_through_their_own_api_are_not_probed(
    host: str, says: str
) -> None:
    from shipit.lifecycle.capabilities import probe
    from shipit.registry import Endpoint, Registry

    with Registry(Endpoint(host=host)) as client:  # no request is made: no network here
        caps = probe(client, "acme/app", registry=f"{host}/acme", tags_too=True)
    assert not caps.deletes and caps.delete_status is None
    assert (
        caps.message is not None
        and caps.message.startswith(f"{host}/acme: ")
        and says in caps.message
    )


# -- the limit on one --apply (--max-delete) ---------------------------------------------------


def repository_of(images: int, deleted: int, *, signed: bool = True) -> RepositoryPlan:
    """A repository of `images` tagged images (two tags each, one of them shared by name
    shape with a release), the first `deleted` of them deleted with their signatures."""
    tags: dict[str, str] = {}
    actions: list[Action] = []
    for i in range(images):
        d = digest(f"image {i}")
        tags[f"1.0.{i}"] = tags[f"sha-{i}"] = d
        what = "delete" if i < deleted else "keep"
        actions.append(Action(digest=d, tags=(f"1.0.{i}",), kind="image", action=what, rule=""))
        if signed:  # an artifact tag: not an image of its own, not counted
            sig = digest(f"signature {i}")
            tags[d.replace(":", "-") + ".sig"] = sig
            actions.append(Action(digest=sig, tags=(), kind="signature", action=what, rule=""))
    return RepositoryPlan(
        image="app", registry="r.example/ns", host="r.example", repository="ns/app",
        tags=tags, actions=tuple(actions),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "count", "percent"),
    [("50%", None, 50), ("100%", None, 100), ("0%", None, 0), ("12", 12, None), (" 3 ", 3, None)],
)
def test_max_delete_reads_a_count_or_a_percentage(
    text: str, count: int | None, percent: int | None
) -> None:
    limit = DeleteLimit.parse(text)
    assert (limit.count, limit.percent) == (count, percent)


@pytest.mark.parametrize("text", ["", "half", "-1", "50 %", "101%", "1.5", "1e3", "%"])
def test_max_delete_refuses_what_is_not_a_limit(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a number|at most 100%"):
        DeleteLimit.parse(text)


def test_more_than_half_of_the_tagged_images_is_refused_by_default_and_half_is_not() -> None:
    default = DeleteLimit.parse()
    assert default.refusal(repository_of(10, 5)) is None  # half: allowed
    refused = default.refusal(repository_of(10, 6))
    assert refused is not None and (refused.deleted, refused.tagged) == (6, 10)  # images only
    assert str(refused) == (
        "r.example/ns/app (r.example/ns): the plan deletes 6 of its 10 tagged images (60%),"
        " more than --max-delete 50% allows"
    )
    assert default.refusal(repository_of(1, 1)) is not None  # the only image of a repository
    assert default.refusal(repository_of(0, 0)) is None


def test_a_count_or_100_percent_allows_what_it_says() -> None:
    assert DeleteLimit.parse("6").refusal(repository_of(10, 6)) is None
    assert DeleteLimit.parse("5").refusal(repository_of(10, 6)) is not None
    assert DeleteLimit.parse("100%").refusal(repository_of(10, 10)) is None
    assert DeleteLimit.parse("0").refusal(repository_of(10, 1)) is not None
    assert DeleteLimit.parse("0%").refusal(repository_of(10, 0)) is None  # nothing deleted


def test_the_dry_run_says_when_apply_would_refuse_and_its_json_carries_it() -> None:
    plan = PrunePlan(
        spec="shipit.yml", made=datetime(2026, 1, 1, tzinfo=UTC),
        repositories=(repository_of(4, 3), repository_of(4, 1)),
    )  # fmt: skip
    limit = DeleteLimit.parse("50%")
    refused = refusals(plan.repositories, limit)
    assert len(refused) == 1 and refused[0].deleted == 3
    text = plan_table(plan, refused=refused)
    assert "--apply would refuse: r.example/ns/app (r.example/ns): the plan deletes 3 of" in text
    assert "`--max-delete 3`" in text and "`--max-delete 100%`" in text
    document = plan_document(plan, limit, refused)
    assert document["max_delete"] == "50%"
    assert [r["deleted"] for r in document["refused"]] == [3]
    assert PrunePlan.from_json(json.loads(json.dumps(document))) == plan  # --plan reads it back


def test_the_warnings_of_a_plan_survive_its_json() -> None:
    repository = RepositoryPlan(
        image="app", registry="r.example/ns", host="r.example", repository="ns/app", tags={},
        actions=(), warnings=("keep #3 {tags: '^pr-'} picked no tag in ns/app",),
    )  # fmt: skip
    plan = PrunePlan(spec="s", made=datetime(2026, 1, 1, tzinfo=UTC), repositories=(repository,))
    assert PrunePlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    assert plan.to_json()["repositories"][0]["warnings"] == list(repository.warnings)
    assert (
        "\nwarning: keep #3 {tags: '^pr-'} picked no tag in ns/app (r.example/ns)\n"
        in plan_table(plan)
    )
