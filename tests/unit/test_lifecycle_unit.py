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
from shipit.lifecycle.records import (
    Action,
    PrunePlan,
    RepositoryPlan,
    artifact_tags,
    parse_time,
    short_tag,
    tag_subject,
)
from shipit.lifecycle.report import plan_table
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
    [("ghcr.io", "GitHub's REST API"), ("docker.io", "Docker Hub's own API"),
     ("index.docker.io", "Docker Hub's own API")],
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
