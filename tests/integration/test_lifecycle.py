"""`shipit prune` and `shipit promote` against a registry history made by real `shipit run`s.

The history (tests/support/history.py): releases v1.0.0, v1.2.0..v1.2.2 and v1.3.0..v1.3.2
(the 1.2 ones signed in cosign's legacy format, the 1.3 ones as cosign 3 bundles), pull
requests 5 (30 days old) and 6 (3 days old, both unsigned), `main` built twice from the same
commit (the first build is left untagged, with its signatures). Every image is an index of
linux/amd64 and linux/arm64. Each is copied into further registries before anything is pruned:
one with deletes turned off, one for the moved-tag test, one for the mixed run.

The policy keeps the two highest patches of every minor line, pull requests younger than 14
days and the two newest `sha-` tags; floating tags (`latest`, `1.3`, `1.2`, `1.0`, `1`) and
what HEAD would publish (`main`, `sha-<HEAD>`) are always kept.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shipit.lifecycle.records import tag_subject
from shipit.registry import Endpoint, Registry
from tests.support.buildkit import Emulation
from tests.support.cli import run_shipit, run_shipit_captured
from tests.support.history import History, copy_repository, make_history, snapshot
from tests.support.keys import KeyPair, cosign_key_pair
from tests.support.services import Dockerd, RegistryFactory, garbage_collect, tool_path
from tests.support.services import Registry as RunningRegistry
from tests.support.vendors import GITLAB_ROLES, start_dockerhub, start_github, start_gitlab

pytestmark = pytest.mark.timeout(2400)

REPO = "history/app"


@dataclass
class World:
    history: History
    main: RunningRegistry  # the history, pruned for real
    no_deletes: RunningRegistry  # a copy, deletes turned off
    moved: RunningRegistry  # a copy, for the moved-tag test
    mixed: RunningRegistry  # a copy, pruned next to `no_deletes`
    searched: RunningRegistry  # a copy, pruned with patterns that grep would read
    limited: RunningRegistry  # a copy, for the limit on what one --apply deletes
    github: RunningRegistry  # a copy behind the GHCR and GitHub API emulation
    gitlab: RunningRegistry  # a copy behind GitLab's
    dockerhub: RunningRegistry  # a copy behind Docker Hub's
    github_moved: RunningRegistry  # a copy behind GitHub's, for the limit and a moved tag


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return cosign_key_pair(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
    dockerd: Dockerd,
    qemu_arm64: Emulation,
    registry_factory: RegistryFactory,
    keys: KeyPair,
) -> World:
    main = registry_factory()
    history = make_history(tmp_path_factory.mktemp("history"), main.host, keys, dockerd.host)
    copies = [registry_factory(delete=False), *(registry_factory() for _ in range(8))]
    with Registry(Endpoint(host=main.host)) as source:
        for copy in copies:
            with Registry(Endpoint(host=copy.host)) as target:
                assert copy_repository(source, target, REPO) > 20
    return World(
        history=history, main=main, no_deletes=copies[0], moved=copies[1], mixed=copies[2],
        searched=copies[3], limited=copies[4], github=copies[5], gitlab=copies[6],
        dockerhub=copies[7], github_moved=copies[8],
    )  # fmt: skip


# -- what the history should give ------------------------------------------------------------

DELETED = ("v1.2.0", "v1.3.0", "pr-5", "main")  # "main": the first build, left untagged
KEPT = ("v1.0.0", "v1.2.1", "v1.2.2", "v1.3.1", "v1.3.2", "pr-6", "main-again")
UNTAGGED_SHA = ("v1.0.0", "v1.2.1", "v1.2.2", "v1.3.1", "v1.3.2")  # their sha- tags go


def images_of(history: History, names: tuple[str, ...]) -> set[str]:
    """The index and platform digests of the named builds."""
    found: set[str] = set()
    for name in names:
        build = history.build(name)
        found |= {build.digest, *build.platforms.values()}
    return found


def attachments(client: Registry, subjects: set[str]) -> set[str]:
    """Every artifact (signature manifests, referrers indexes and what they list) of `subjects`,
    found by the test itself from the tag names."""
    found: set[str] = set()
    for tag in client.tags(REPO):
        subject = tag_subject(tag)
        if subject is None or subject[0] not in subjects:
            continue
        manifest = client.manifest(REPO, tag)
        found.add(manifest.digest)
        found |= {c.digest for c in manifest.children()}
    return found


def present(client: Registry, digest: str) -> bool:
    return client.manifest_digest(REPO, digest) == digest


def pull_everything(client: Registry, tag: str) -> list[str]:
    """Read the tag's manifest, every platform's and every blob whole (digests checked);
    the platforms pulled."""
    top = client.manifest(REPO, tag)
    images = [client.manifest(REPO, c.digest) for c in top.children()] or [top]
    platforms = [c.platform or "" for c in top.children()] or [""]
    for image in images:
        for blob in image.blobs():
            assert len(client.read_blob(REPO, blob.digest, limit=64 * 1024 * 1024)) == blob.size
    return platforms


def cosign_verify(keys: KeyPair, ref: str, sign_format: str) -> subprocess.CompletedProcess[str]:
    argv = [tool_path("cosign"), "verify", "--key", str(keys.public), "--insecure-ignore-tlog"]
    argv += ["--allow-http-registry", "--allow-insecure-registry"]
    if sign_format == "legacy":
        argv.append("--new-bundle-format=false")
    return subprocess.run(
        [*argv, ref], capture_output=True, text=True, timeout=180, check=False,
        env={"PATH": os.environ["PATH"], "HOME": os.environ["HOME"]},
    )  # fmt: skip


def blobs_of(client: Registry, digests: set[str]) -> set[str]:
    """The manifests' own digests and the blobs (configs, layers) they name."""
    found = set(digests)
    for digest in digests:
        found |= {b.digest for b in client.manifest(REPO, digest).blobs()}
    return found


def blob_file(reg: RunningRegistry, digest: str) -> Path:
    hexa = digest.split(":", 1)[1]
    return reg.root / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexa[:2] / hexa / "data"


def stored_manifests(reg: RunningRegistry) -> set[str]:
    """Every manifest the registry's storage holds for REPO, tagged or not (distribution 2.8
    keeps one revision link per manifest; a deleted manifest loses its link)."""
    revisions = reg.root / "docker/registry/v2/repositories" / REPO / "_manifests/revisions"
    return {f"sha256:{p.parent.name}" for p in revisions.glob("sha256/*/link")}


# -- what `shipit run` left -------------------------------------------------------------------


def test_the_runs_leave_no_manifest_that_no_tag_reaches(world: World) -> None:
    """Signing and attesting rewrite the referrers index `sha256-<hex>`; the index each
    step replaced must not stay behind untagged, where neither prune nor the garbage
    collector (which keeps what every stored manifest lists) would ever let it go."""
    history = world.history
    with history.client() as client:
        reached = set(snapshot(client, REPO).values())
        reached |= images_of(history, ("main",))  # the first main build, left untagged
        for digest in list(reached):
            reached |= {c.digest for c in client.manifest(REPO, digest).children()}
    assert stored_manifests(world.main) == reached


# -- prune: dry run, apply, garbage collection ----------------------------------------------


@dataclass
class DryRun:
    plan: dict[str, Any]
    table: str
    before: dict[str, str]
    after: dict[str, str]
    deleted_attachments: set[str]
    kept_attachments: set[str]


@pytest.fixture(scope="module")
def dry_run(world: World) -> DryRun:
    history = world.history
    with history.client() as client:
        before = snapshot(client, REPO)
        deleted_attachments = attachments(client, images_of(history, DELETED))
        kept_attachments = attachments(client, images_of(history, KEPT))
    args = ["prune", "-C", str(history.project)]
    code, table, err = run_shipit_captured(args, history.env)
    assert code == 0, err
    (history.project.parent / "dry-run.txt").write_text(table, encoding="utf-8")  # to read
    code, out, err = run_shipit_captured([*args, "--json"], history.env)
    assert code == 0, err
    with history.client() as client:
        after = snapshot(client, REPO)
    return DryRun(
        plan=json.loads(out), table=table, before=before, after=after,
        deleted_attachments=deleted_attachments, kept_attachments=kept_attachments,
    )  # fmt: skip


def test_the_dry_run_changes_nothing_and_plans_exactly_the_expected_actions(
    world: World, dry_run: DryRun
) -> None:
    history = world.history
    assert dry_run.after == dry_run.before  # every tag, pointing where it did
    with history.client() as client:
        assert all(present(client, d) for d in images_of(history, DELETED))
    [repository] = dry_run.plan["repositories"]
    assert repository["repository"] == f"{world.main.host}/{REPO}"
    actions: dict[str, set[str]] = {"keep": set(), "delete": set(), "untag": set()}
    for row in repository["actions"]:
        actions[row["action"]].add(row["digest"] if row["action"] != "untag" else row["tags"][0])
    assert actions["delete"] == images_of(history, DELETED) | dry_run.deleted_attachments
    assert actions["keep"] == images_of(history, KEPT) | dry_run.kept_attachments
    assert actions["untag"] == {f"sha-{history.build(n).sha[:7]}" for n in UNTAGGED_SHA}
    rules = {
        row["digest"]: row["rule"] for row in repository["actions"] if row["action"] != "untag"
    }
    assert rules[history.build("main-again").digest] == "main: published for the current commit"
    assert rules[history.build("v1.3.2").digest].endswith("floating tag")
    assert rules[history.build("v1.3.1").digest] == "keep #1 {semver: true, newest_per_minor: 2}"
    assert rules[history.build("pr-6").digest] == "keep #2 {tags: '^pr-.+', younger_than: 14d}"
    assert rules[history.build("pr-5").digest] == "no rule keeps its tags"
    assert rules[history.build("main").digest] == "untagged: delete"
    for row in repository["actions"]:  # the table has a row per action, with its rule
        assert row["digest"][:19] in dry_run.table
    # the totals line counts the actions above (attachments grow with what shipit attaches)
    counts = ", ".join(f"{action} {len(found)}" for action, found in actions.items())
    assert f"({world.main.host}/history): {counts}\n" in dry_run.table
    assert "dry run: nothing was changed" in dry_run.table


@dataclass
class Applied:
    code: int
    out: str
    err: str
    report: dict[str, Any]
    before: dict[str, str]
    after: dict[str, str]
    freed: set[str]  # blobs only the deleted manifests named
    kept_blobs: set[str]


@pytest.fixture(scope="module")
def applied(world: World, dry_run: DryRun) -> Applied:
    history = world.history
    [repository] = dry_run.plan["repositories"]
    deleted = {r["digest"] for r in repository["actions"] if r["action"] == "delete"}
    kept = {r["digest"] for r in repository["actions"] if r["action"] == "keep"}
    with history.client() as client:
        before = snapshot(client, REPO)
        kept_blobs = blobs_of(client, kept)
        freed = blobs_of(client, deleted) - kept_blobs
    report = history.project.parent / "prune-report.json"
    args = ["prune", "-C", str(history.project), "--apply", "--report", str(report)]
    code, out, err = run_shipit_captured(args, history.env)
    with history.client() as client:
        after = snapshot(client, REPO)
    return Applied(
        code=code, out=out, err=err, report=json.loads(report.read_text(encoding="utf-8")),
        before=before, after=after, freed=freed, kept_blobs=kept_blobs,
    )  # fmt: skip


def test_apply_deletes_exactly_the_plan_and_what_stays_still_pulls_and_verifies(
    world: World, dry_run: DryRun, applied: Applied, keys: KeyPair
) -> None:
    history = world.history
    assert applied.code == 0, applied.err
    assert applied.report["status"] == "success"
    [repository] = dry_run.plan["repositories"]
    kept_tags = {t for r in repository["actions"] if r["action"] == "keep" for t in r["tags"]}
    untagged = {r["tags"][0] for r in repository["actions"] if r["action"] == "untag"}
    assert set(applied.after) == kept_tags
    assert set(applied.before) - set(applied.after) >= untagged
    assert all(applied.after[t] == applied.before[t] for t in applied.after)  # nothing moved
    [done] = applied.report["repositories"]
    assert done["capabilities"]["deletes"] is True
    assert done["capabilities"]["tag_delete"] is False  # distribution 2.8: 400 DIGEST_INVALID
    assert done["capabilities"]["tag_delete_status"] == 400
    assert {o["status"] for o in done["outcomes"]} == {"kept", "deleted", "untagged"}
    with history.client() as client:
        for row in repository["actions"]:
            if row["action"] == "delete":
                assert not present(client, row["digest"]), row
            else:
                assert present(client, row["digest"]), row
        for tag in sorted(kept_tags):
            if tag_subject(tag) is None:
                assert pull_everything(client, tag) == ["linux/amd64", "linux/arm64"], tag
        # nothing of a deleted digest is left: no .sig, no referrers index, no bundle
        gone = images_of(history, DELETED)
        assert not [t for t in client.tags(REPO) if (s := tag_subject(t)) and s[0] in gone]
        assert not any(present(client, d) for d in dry_run.deleted_attachments)
    for name in ("v1.0.0", "v1.2.2", "v1.3.2", "main-again"):
        build = history.build(name)
        for digest in (build.digest, *build.platforms.values()):
            verified = cosign_verify(keys, f"{world.main.host}/{REPO}@{digest}", build.sign_format)
            assert verified.returncode == 0, (name, verified.stderr)
    arm64 = docker_pull(world.main.host, "latest", "linux/arm64")
    assert arm64 == "arm64"


def docker_pull(host: str, tag: str, platform: str) -> str:
    """`docker pull --platform` of a kept tag; the architecture the daemon got."""
    ref = f"{host}/{REPO}:{tag}"
    pulled = subprocess.run(
        ["docker", "pull", "--platform", platform, ref],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert pulled.returncode == 0, pulled.stderr
    arch = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Architecture}}", ref],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.strip()  # fmt: skip
    subprocess.run(["docker", "image", "rm", ref], capture_output=True, timeout=60, check=False)
    return arch


def test_garbage_collection_after_apply_frees_the_deleted_blobs_and_breaks_nothing_kept(
    world: World, applied: Applied, keys: KeyPair
) -> None:
    assert applied.code == 0, applied.err
    assert applied.freed and all(blob_file(world.main, b).is_file() for b in applied.freed)
    said = garbage_collect(world.main)  # stops the registry by PID, collects, starts it again
    # distribution 2.8's collector ends with "N blobs marked, M blobs and K manifests eligible"
    counted = re.search(r"(\d+) blobs marked, (\d+) blobs and \d+ manifests eligible", said)
    assert counted is not None, said[-2000:]
    assert int(counted.group(2)) >= len(applied.freed)
    assert not [b for b in applied.freed if blob_file(world.main, b).exists()]
    assert all(blob_file(world.main, b).is_file() for b in applied.kept_blobs)
    with world.history.client() as client:
        assert snapshot(client, REPO) == applied.after
        for tag in applied.after:
            if tag_subject(tag) is None:
                assert pull_everything(client, tag) == ["linux/amd64", "linux/arm64"], tag
    for name in ("v1.0.0", "v1.3.2"):
        build = world.history.build(name)
        ref = f"{world.main.host}/{REPO}@{build.platforms['linux/arm64']}"
        verified = cosign_verify(keys, ref, build.sign_format)
        assert verified.returncode == 0, verified.stderr


# -- registries that refuse, tags that move ----------------------------------------------------


def test_a_registry_without_deletes_is_named_left_whole_and_the_others_are_still_pruned(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    history = world.history
    spec = history.write_spec(
        history.project / "two.yml",
        [f"{world.no_deletes.host}/history", f"{world.mixed.host}/history"],
    )
    refused, pruned = (
        Registry(Endpoint(host=world.no_deletes.host)),
        Registry(Endpoint(host=world.mixed.host)),
    )
    before = snapshot(refused, REPO)
    doomed = history.build("v1.2.0").digest
    assert present(pruned, doomed)
    report = history.project.parent / "two-report.json"
    args = [
        "prune",
        "-C",
        str(history.project),
        "-f",
        spec.name,
        "--apply",
        "--report",
        str(report),
    ]
    code, _out, err = run_shipit(args, capsys, history.env)
    assert code == 1, err
    assert f"{world.no_deletes.host}/history refuses deletes (405" in err
    assert "turn deletes on" in err and "Traceback" not in err
    assert snapshot(refused, REPO) == before  # nothing half-done: every tag where it was
    assert all(present(refused, d) for d in images_of(history, ("v1.2.0", "v1.3.0", "pr-5")))
    assert not present(pruned, doomed)  # the other registry was pruned all the same
    document = json.loads(report.read_text(encoding="utf-8"))
    by_registry = {r["registry"]: r for r in document["repositories"]}
    assert by_registry[f"{world.no_deletes.host}/history"]["capabilities"]["delete_status"] == 405
    assert not any(
        o["done"]
        for o in by_registry[f"{world.no_deletes.host}/history"]["outcomes"]
        if o["action"] != "keep"
    )
    assert all(o["done"] for o in by_registry[f"{world.mixed.host}/history"]["outcomes"])
    refused.close()
    pruned.close()


def test_a_tag_moved_between_the_plan_and_the_apply_is_skipped(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    history = world.history
    spec = history.write_spec(history.project / "moved.yml", [f"{world.moved.host}/history"])
    args = ["prune", "-C", str(history.project), "-f", spec.name]
    code, out, err = run_shipit([*args, "--json"], capsys, history.env)
    assert code == 0, err
    plan = history.project.parent / "moved-plan.json"
    plan.write_text(out, encoding="utf-8")
    old = history.build("pr-5")
    client = Registry(Endpoint(host=world.moved.host))
    assert client.manifest_digest(REPO, "pr-5") == old.digest
    # PR 5 gets a new push (here: the pr-6 image) after the plan was made
    client.put_manifest(REPO, "pr-5", client.manifest(REPO, "pr-6"))
    report = history.project.parent / "moved-report.json"
    code, out, err = run_shipit(
        [*args, "--apply", "--plan", str(plan), "--report", str(report)], capsys, history.env
    )
    assert code == 1, err  # something planned was not done
    assert all(present(client, d) for d in images_of(history, ("pr-5",)))  # skipped, not lost
    assert client.manifest_digest(REPO, "pr-5") == history.build("pr-6").digest
    assert not present(client, history.build("v1.2.0").digest)  # the rest of the plan was done
    [done] = json.loads(report.read_text(encoding="utf-8"))["repositories"]
    skipped = {o["digest"]: o["skipped"] for o in done["outcomes"] if o["skipped"]}
    assert skipped[old.digest] == "tag pr-5 moved since the plan"
    assert set(skipped) == {old.digest, *old.platforms.values()}
    assert "skipped: tag pr-5 moved since the plan" in out
    client.close()


# -- keep rules that err towards keeping, and a limit on one --apply ----------------------------

# The policy a user wrote (issue 19): `^pr-` and `^main$` as grep reads them, and a rule for
# tags this repository does not have.
SEARCHED = """\
retention:
  keep:
    - {semver: true, newest_per_minor: 1}
    - {tags: '^main$'}
    - {tags: '^pr-', newest: 1}
    - {tags: '^release-'}
  untagged: delete
"""
# Only the newest release of every major line: six of the ten tagged images go (the floating
# tags 1.0 and 1.2 and what HEAD publishes keep v1.0.0, v1.2.2 and main).
GREEDY = """\
retention:
  keep:
    - {semver: true, newest_per_major: 1}
  untagged: delete
"""


def prune_args(history: History, spec: Path, *extra: str) -> list[str]:
    return ["prune", "-C", str(history.project), "-f", spec.name, *extra]


def test_patterns_are_searched_in_tags_and_a_rule_that_picks_nothing_is_said(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    history = world.history
    registry = f"{world.searched.host}/history"
    spec = history.write_spec(history.project / "searched.yml", [registry], SEARCHED)
    warning = f"keep #4 {{tags: '^release-'}} picked no tag in {REPO} ({registry})"
    code, table, err = run_shipit(prune_args(history, spec), capsys, history.env)
    assert code == 0, err
    (history.project.parent / "searched-dry-run.txt").write_text(table, encoding="utf-8")
    assert f"warning: {warning}" in table
    assert "--apply would refuse" not in table  # 5 of 10 tagged images: half is allowed
    code, out, err = run_shipit(prune_args(history, spec, "--json"), capsys, history.env)
    assert code == 0, err
    assert f"warning: {warning}" in err
    plan = json.loads(out)
    [repository] = plan["repositories"]
    assert repository["warnings"] == [f"keep #4 {{tags: '^release-'}} picked no tag in {REPO}"]
    assert plan["max_delete"] == "50%" and plan["refused"] == []
    rules = {r["digest"]: r["rule"] for r in repository["actions"] if r["action"] != "untag"}
    assert rules[history.build("pr-6").digest] == "keep #3 {tags: '^pr-', newest: 1}"
    assert rules[history.build("pr-5").digest] == "no rule keeps its tags"
    report = history.project.parent / "searched-report.json"
    code, out, err = run_shipit(
        prune_args(history, spec, "--apply", "--report", str(report)), capsys, history.env
    )
    assert code == 0, err
    assert f"warning: {warning}" in err  # said again when it is carried out
    [done] = json.loads(report.read_text(encoding="utf-8"))["repositories"]
    assert done["warnings"] == repository["warnings"]
    with Registry(Endpoint(host=world.searched.host)) as client:
        kept = snapshot(client, REPO)
        assert kept["pr-6"] == history.build("pr-6").digest
        assert kept["main"] == history.build("main-again").digest
        assert "pr-5" not in kept
        assert all(present(client, d) for d in images_of(history, ("pr-6", "main-again")))
        assert not any(present(client, d) for d in images_of(history, ("pr-5", "v1.3.1")))


def test_apply_refuses_to_delete_more_than_half_until_max_delete_allows_it(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    history = world.history
    registry = f"{world.limited.host}/history"
    spec = history.write_spec(history.project / "greedy.yml", [registry], GREEDY)
    refusal = (
        f"{world.limited.host}/{REPO} ({registry}): the plan deletes 6 of its 10 tagged images"
        " (60%), more than --max-delete 50% allows"
    )
    code, table, err = run_shipit(prune_args(history, spec), capsys, history.env)
    assert code == 0, err
    (history.project.parent / "greedy-dry-run.txt").write_text(table, encoding="utf-8")
    assert f"--apply would refuse: {refusal}" in table
    assert "`--max-delete 6`" in table and "`--max-delete 100%`" in table
    code, out, err = run_shipit(prune_args(history, spec, "--json"), capsys, history.env)
    assert code == 0, err
    [refused] = json.loads(out)["refused"]
    assert (refused["deleted"], refused["tagged"], refused["max_delete"]) == (6, 10, "50%")
    client = Registry(Endpoint(host=world.limited.host))
    before = snapshot(client, REPO)
    report = history.project.parent / "greedy-report.json"
    apply = prune_args(history, spec, "--apply", "--report", str(report))
    code, _out, err = run_shipit(apply, capsys, history.env)
    assert code == 1, err
    assert "prune --apply refused, nothing was deleted" in err and refusal in err
    assert "--max-delete 6" in err and "Traceback" not in err
    assert snapshot(client, REPO) == before  # every tag where it was
    assert stored_manifests(world.limited) >= set(before.values())
    assert not report.exists()
    code, _out, err = run_shipit(
        prune_args(history, spec, "--apply", "--max-delete", "5"), capsys, history.env
    )
    assert code == 1 and "more than --max-delete 5 allows" in err
    assert snapshot(client, REPO) == before
    code, _out, err = run_shipit([*apply, "--max-delete", "100%"], capsys, history.env)
    assert code == 0, err
    after = snapshot(client, REPO)
    gone = ("v1.2.0", "v1.2.1", "v1.3.0", "v1.3.1", "pr-5", "pr-6")
    assert not any(present(client, d) for d in images_of(history, gone))
    stays = ("v1.0.0", "v1.2.2", "v1.3.2", "main-again")
    assert all(present(client, d) for d in images_of(history, stays))
    assert {after[t] for t in ("latest", "1.0", "1.2", "main")} == {
        history.build(n).digest for n in stays
    }
    code, _out, err = run_shipit(
        prune_args(history, spec, "--max-delete", "half"), capsys, history.env
    )
    assert code == 2 and "'half' is not a number of images" in err
    client.close()


# -- prune through the vendors' own APIs (emulations: tests/support/vendors.py) ---------------


def vendor_entry(host: str, api: str, api_url: str, username: str, variable: str) -> str:
    """A registry entry of the spec (a YAML flow mapping) that deletes through `api`."""
    return (
        f"{{url: {host}/history, api: {api}, api_url: '{api_url}', username: {username},"
        f" password_env: {variable}}}"
    )


def expect_the_policy(world: World, client: Registry, dry_run: DryRun) -> None:
    """Exactly the policy's set is gone: every tag of a deleted image, the `sha-` tags that no
    rule keeps; what stays keeps its tags and pulls for both platforms."""
    history = world.history
    [repository] = dry_run.plan["repositories"]
    kept_tags = {t for r in repository["actions"] if r["action"] == "keep" for t in r["tags"]}
    assert set(snapshot(client, REPO)) == kept_tags
    for tag in sorted(kept_tags):
        if tag_subject(tag) is None:
            assert pull_everything(client, tag) == ["linux/amd64", "linux/arm64"], tag
    assert all(present(client, d) for d in images_of(history, KEPT))


def test_prune_on_ghcr_deletes_package_versions_through_githubs_api(
    world: World, dry_run: DryRun, keys: KeyPair, capsys: pytest.CaptureFixture[str]
) -> None:
    history = world.history
    tokens = {"ghp_reader": {"read:packages"}, "ghp_deleter": {"read:packages", "delete:packages"}}
    github = start_github(world.github, owner="history", owner_kind="org", tokens=tokens)
    try:
        entry = vendor_entry(github.host, "github", github.url, "bot", "GH_TOKEN")
        spec = history.write_spec(history.project / "ghcr.yml", [entry])
        args = ["prune", "-C", str(history.project), "-f", spec.name]
        env = {**history.env, "GH_TOKEN": "ghp_reader"}
        code, table, err = run_shipit(args, capsys, env)
        assert code == 0, err
        assert "through GitHub's Packages API; --apply cannot delete here:" in table
        assert "without delete:packages" in table
        with Registry(Endpoint(host=world.github.host)) as backend:
            before = snapshot(backend, REPO)
            code, _out, err = run_shipit([*args, "--apply"], capsys, env)
            assert code == 1, err
            assert "refuses to delete package versions" in err and "403" in err
            assert snapshot(backend, REPO) == before  # nothing deleted
            assert [c.status for c in github.calls if c.method == "DELETE"] == [403]  # the probe
            github.calls.clear()
            github.registry_calls.clear()
            env["GH_TOKEN"] = "ghp_deleter"
            report = history.project.parent / "ghcr-report.json"
            code, out, err = run_shipit([*args, "--apply", "--report", str(report)], capsys, env)
            assert code == 0, err + out
            expect_the_policy(world, backend, dry_run)
            deleted = {d for d in images_of(history, DELETED) if not present(backend, d)}
            assert deleted == images_of(history, DELETED)
            assert not any(present(backend, d) for d in dry_run.deleted_attachments)
        # every deletion went through the REST API: GHCR's registry API refuses (405)
        deletes = [c for c in github.calls if c.method == "DELETE"]
        assert deletes and all(c.status == 204 for c in deletes)
        assert not [c for c in github.registry_calls if c.method == "DELETE"]
        document = json.loads(report.read_text(encoding="utf-8"))
        assert document["repositories"][0]["api"] == "github"
        build = history.build("v1.3.2")
        verified = cosign_verify(keys, f"{world.github.host}/{REPO}@{build.digest}", "bundle")
        assert verified.returncode == 0, verified.stderr
    finally:
        github.stop()


def test_through_githubs_api_the_limit_and_a_moved_tag_hold_as_on_the_registry_api(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    history = world.history
    tokens = {"ghp_deleter": {"read:packages", "delete:packages"}}
    github = start_github(world.github_moved, owner="history", owner_kind="org", tokens=tokens)
    try:
        entry = vendor_entry(github.host, "github", github.url, "bot", "GH_TOKEN")
        env = {**history.env, "GH_TOKEN": "ghp_deleter"}
        greedy = history.write_spec(history.project / "ghcr-greedy.yml", [entry], GREEDY)
        client = Registry(Endpoint(host=world.github_moved.host))
        before = snapshot(client, REPO)
        args = ["prune", "-C", str(history.project), "-f", greedy.name, "--apply"]
        code, _out, err = run_shipit(args, capsys, env)
        assert code == 1 and "prune --apply refused, nothing was deleted" in err
        assert snapshot(client, REPO) == before
        assert not [c for c in github.calls if c.method == "DELETE"]  # not even a probe

        spec = history.write_spec(history.project / "ghcr-moved.yml", [entry])
        args = ["prune", "-C", str(history.project), "-f", spec.name]
        code, out, err = run_shipit([*args, "--json"], capsys, env)
        assert code == 0, err
        plan = history.project.parent / "ghcr-moved-plan.json"
        plan.write_text(out, encoding="utf-8")
        old = history.build("pr-5")
        client.put_manifest(REPO, "pr-5", client.manifest(REPO, "pr-6"))  # a new push of PR 5
        report = history.project.parent / "ghcr-moved-report.json"
        apply = [*args, "--apply", "--plan", str(plan), "--report", str(report)]
        code, out, err = run_shipit(apply, capsys, env)
        assert code == 1, err  # something planned was not done
        assert all(present(client, d) for d in images_of(history, ("pr-5",)))  # skipped, not lost
        assert client.manifest_digest(REPO, "pr-5") == history.build("pr-6").digest
        assert not present(client, history.build("v1.2.0").digest)  # the rest was done
        [done] = json.loads(report.read_text(encoding="utf-8"))["repositories"]
        skipped = {o["digest"]: o["skipped"] for o in done["outcomes"] if o["skipped"]}
        assert set(skipped) == {old.digest, *old.platforms.values()}
        client.close()
    finally:
        github.stop()


def test_prune_on_gitlab_deletes_tags_through_its_registry_api(
    world: World, dry_run: DryRun, capsys: pytest.CaptureFixture[str]
) -> None:
    history = world.history
    tokens = {"glpat-reporter": GITLAB_ROLES["reporter"], "glpat-dev": GITLAB_ROLES["developer"]}
    gitlab = start_gitlab(
        world.gitlab, project_path="history/app", project_id=42, tokens=tokens
    )  # a job token of some versions: no registry `delete` action (registry_deletes=False)
    try:
        entry = vendor_entry(gitlab.host, "gitlab", gitlab.api_url, "bot", "GL_TOKEN")
        spec = history.write_spec(history.project / "gitlab.yml", [entry])
        args = ["prune", "-C", str(history.project), "-f", spec.name]
        env = {**history.env, "GL_TOKEN": "glpat-reporter"}
        with Registry(Endpoint(host=world.gitlab.host)) as backend:
            before = snapshot(backend, REPO)
            code, _out, err = run_shipit([*args, "--apply"], capsys, env)
            assert code == 1, err
            assert "refuses to delete" in err and "403" in err and "probe tag" in err
            after = snapshot(backend, REPO)
            probe = {t for t in after if t.startswith("shipit-probe-")}
            assert {t: d for t, d in after.items() if t not in probe} == before
            assert [c.status for c in gitlab.calls if c.method == "DELETE"] == [403]  # the probe
            gitlab.calls.clear()
            env["GL_TOKEN"] = "glpat-dev"
            report = history.project.parent / "gitlab-report.json"
            code, out, err = run_shipit([*args, "--apply", "--report", str(report)], capsys, env)
            assert code == 0, err + out
            # the refused probe's tag: the next plan deletes it, no rule keeps it
            assert not [t for t in snapshot(backend, REPO) if t.startswith("shipit-probe-")]
            expect_the_policy(world, backend, dry_run)
            # the tags went; what they left untagged waits for GitLab's garbage collection
            # (the first `main` build, untagged already, was never copied here)
            copied = images_of(history, ("v1.2.0", "v1.3.0", "pr-5"))
            assert all(present(backend, d) for d in copied)
        [done] = json.loads(report.read_text(encoding="utf-8"))["repositories"]
        notes = [o["note"] for o in done["outcomes"] if o["note"]]
        assert notes and all("GitLab's garbage collection" in n for n in notes)
        assert {c.status for c in gitlab.calls if c.method == "DELETE"} == {200}
    finally:
        gitlab.stop()


def test_prune_on_docker_hub_deletes_tags_through_hub_then_untagged_digests(
    world: World, dry_run: DryRun, capsys: pytest.CaptureFixture[str]
) -> None:
    history = world.history
    accounts = {
        "bot": ("hub-secret", {"read", "write", "delete"}),
        "rw": ("rw-secret", {"read", "write"}),
    }
    hub = start_dockerhub(world.dockerhub, accounts=accounts)
    try:
        entry = vendor_entry(hub.host, "dockerhub", hub.api_url, "bot", "HUB_PASSWORD")
        spec = history.write_spec(history.project / "hub.yml", [entry])
        args = ["prune", "-C", str(history.project), "-f", spec.name]
        env = {**history.env, "HUB_PASSWORD": "hub-secret"}
        code, table, err = run_shipit(args, capsys, env)
        assert code == 0, err
        assert "through Docker Hub's API" in table and "cannot delete here" not in table
        report = history.project.parent / "hub-report.json"
        with Registry(Endpoint(host=world.dockerhub.host)) as backend:
            code, out, err = run_shipit([*args, "--apply", "--report", str(report)], capsys, env)
            assert code == 0, err + out
            expect_the_policy(world, backend, dry_run)
            assert not any(present(backend, d) for d in images_of(history, DELETED))
            assert not any(present(backend, d) for d in dry_run.deleted_attachments)
        assert {c.status for c in hub.calls if c.method == "DELETE"} == {204}
        assert "hub-secret" not in out + err + report.read_text(encoding="utf-8")
    finally:
        hub.stop()


# -- promote -------------------------------------------------------------------------------------


def test_promote_copies_a_signed_two_platform_image_with_its_signatures(
    world: World,
    registry_factory: RegistryFactory,
    keys: KeyPair,
    capsys: pytest.CaptureFixture[str],
) -> None:
    history = world.history
    target = registry_factory()
    build = history.build("main-again")
    report = history.project.parent / "promote.json"
    args = ["promote", "-C", str(history.project), f"{world.main.host}/{REPO}:main"]
    args += ["--to", f"{target.host}/promoted", "--to", f"{world.main.host}/mirror"]
    code, _out, err = run_shipit([*args, "--report", str(report)], capsys, history.env)
    assert code == 0, err
    document = json.loads(report.read_text(encoding="utf-8"))
    assert document["verified"] is True and document["status"] == "success"
    by_registry = {t["registry"]: t for t in document["targets"]}
    remote, mirror = (
        by_registry[f"{target.host}/promoted"],
        by_registry[f"{world.main.host}/mirror"],
    )
    assert remote["digest"] == mirror["digest"] == build.digest  # the same digest everywhere
    assert remote["blobs_copied"] > 0
    assert mirror["blobs_mounted"] > 0 and mirror["blobs_copied"] == 0  # one host: mounted
    for host, repository in ((target.host, "promoted/app"), (world.main.host, "mirror/app")):
        with Registry(Endpoint(host=host)) as client:
            assert client.manifest_digest(repository, "main") == build.digest
        for digest in (build.digest, *build.platforms.values()):
            verified = cosign_verify(keys, f"{host}/{repository}@{digest}", "bundle")
            assert verified.returncode == 0, verified.stderr


def test_promote_refuses_an_unsigned_image_unless_allowed(
    world: World, registry_factory: RegistryFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    history = world.history
    target = registry_factory()
    build = history.build("pr-6")
    args = ["promote", "-C", str(history.project), f"{world.main.host}/{REPO}:pr-6"]
    args += ["--to", f"{target.host}/promoted"]
    code, _out, err = run_shipit(args, capsys, history.env)
    assert code == 1
    assert "is refused: its signature does not verify" in err and "--allow-unsigned" in err
    with Registry(Endpoint(host=target.host)) as client:
        assert client.tags("promoted/app") == []  # nothing copied
    code, _out, err = run_shipit([*args, "--allow-unsigned"], capsys, history.env)
    assert code == 0, err
    assert "without a verified signature" in err
    with Registry(Endpoint(host=target.host)) as client:
        assert client.manifest_digest("promoted/app", "pr-6") == build.digest
        assert all(client.has_manifest("promoted/app", d) for d in build.platforms.values())
