"""Layers streamed to registries while they are compressed, against real registries.

`Registry.upload_growing` follows a file its writer is still writing (one streamed PATCH, then
a PUT with the digest); when the stream fails, the finished file is uploaded the usual way.
End to end, a run stores every blob once, and a second run of the same image sends no layer
again: the registry holds the image's config, so every layer is checked with a HEAD first.
Whether a layer is still being written when its upload begins is timing, so the stream itself
is tested with a writer the test holds back.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from shipit.registry import Descriptor, Endpoint, GrowingFile, Registry, RegistryError
from tests.support.cli import run_shipit
from tests.support.faults import FaultProxy
from tests.support.project import make_project, run_env
from tests.support.services import Dockerd, RegistryFactory
from tests.support.services import Registry as RunningRegistry

pytestmark = pytest.mark.timeout(300)


def client_for(host: str, notes: list[str] | None = None) -> Registry:
    endpoint = Endpoint(host=host, insecure=False, ca_file=None, credentials=None)
    return Registry(
        endpoint, retries=2, backoff=0.05, on_retry=notes.append if notes is not None else None
    )


class Writer:
    """Writes `data` into a `GrowingFile` piece by piece, each piece when the test says so."""

    def __init__(
        self, path: Path, data: bytes, pieces: int, *, give_up_at: int | None = None
    ) -> None:
        self.blob = GrowingFile(path)
        self.data = data
        self.give_up_at = give_up_at
        self.steps = [threading.Event() for _ in range(pieces)]
        self.thread = threading.Thread(target=self._write, daemon=True)
        self.thread.start()

    @property
    def descriptor(self) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(self.data).hexdigest()
        return Descriptor(media_type="application/octet-stream", digest=digest, size=len(self.data))

    def _write(self) -> None:
        size = -(-len(self.data) // len(self.steps))
        with self.blob.path.open("wb", buffering=0) as sink:
            for index, step in enumerate(self.steps):
                if not step.wait(60):
                    self.blob.fail("the test never let the writer go on")
                    return
                if index == self.give_up_at:
                    self.blob.fail("the writer gave up")
                    return
                sink.write(self.data[index * size : (index + 1) * size])
                self.blob.grew(min(len(self.data), (index + 1) * size))
        self.blob.finish(self.descriptor)


def upload_in_background(
    registry: Registry, repository: str, blob: GrowingFile, done: list[int]
) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(registry.upload_growing(repository, blob, on_bytes=done.append))
        except RegistryError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def test_a_blob_reaches_the_registry_while_it_is_written(
    tmp_path: Path, plain_registry: RunningRegistry
) -> None:
    writer = Writer(tmp_path / "layer", os.urandom(3 * 1024 * 1024 + 5), pieces=3)
    done: list[int] = []
    with FaultProxy(f"http://{plain_registry.host}") as proxy, client_for(proxy.host) as registry:
        thread, outcome = upload_in_background(registry, "stream/a", writer.blob, done)
        writer.steps[0].set()
        # the first piece is on its way before the rest of the blob even exists
        for _ in range(600):
            if done:
                break
            threading.Event().wait(0.05)
        assert done and max(done) <= len(writer.data) // 3 + 1
        assert not writer.blob.finished
        writer.steps[1].set()
        writer.steps[2].set()
        thread.join(60)
        requests_seen = list(proxy.state.requests)
    assert outcome == [writer.descriptor]
    assert done[-1] == len(writer.data)
    methods = [line.split()[0] for line in requests_seen]
    assert methods == ["GET", "POST", "PATCH", "PUT"]  # the scheme probe, then one session
    with client_for(plain_registry.host) as registry:
        assert registry.has_blob("stream/a", writer.descriptor.digest)
        with registry._open_blob("stream/a", writer.descriptor) as response:
            assert response.content == writer.data


@pytest.mark.parametrize(
    ("faults", "shown"),
    [({"reset_first": 1}, "reset PATCH"), ({"fail_first": 1, "status": 413}, "413 PATCH")],
)
def test_a_stream_that_fails_falls_back_to_the_finished_file(
    tmp_path: Path, plain_registry: RunningRegistry, faults: dict[str, int], shown: str
) -> None:
    writer = Writer(tmp_path / "layer", os.urandom(2 * 1024 * 1024), pieces=2)
    notes: list[str] = []
    with (
        FaultProxy(f"http://{plain_registry.host}", start_on="PATCH ", **faults) as proxy,
        client_for(proxy.host, notes) as registry,
    ):
        thread, outcome = upload_in_background(registry, "stream/b", writer.blob, [])
        for step in writer.steps:
            step.set()
        thread.join(60)
        injected = list(proxy.state.injected)
        requests_seen = list(proxy.state.requests)
    assert outcome == [writer.descriptor]
    assert [i.rsplit("/", 1)[0] for i in injected] == [f"{shown} /v2/stream/b/blobs/uploads"], (
        injected
    )
    assert any("streamed upload to stream/b failed" in n and "finished file" in n for n in notes)
    # the failed session was cancelled; the blob went up again as one PUT, after a HEAD
    methods = [line.split()[0] for line in requests_seen]
    assert methods[methods.index("PATCH") + 1 :] == ["DELETE", "HEAD", "POST", "PUT"]
    with client_for(plain_registry.host) as registry:
        assert registry.has_blob("stream/b", writer.descriptor.digest)


def test_a_writer_that_gives_up_leaves_no_blob(
    tmp_path: Path, plain_registry: RunningRegistry
) -> None:
    writer = Writer(tmp_path / "layer", os.urandom(2 * 1024 * 1024), pieces=2, give_up_at=1)
    with FaultProxy(f"http://{plain_registry.host}") as proxy, client_for(proxy.host) as registry:
        thread, outcome = upload_in_background(registry, "stream/c", writer.blob, [])
        writer.steps[0].set()
        writer.steps[1].set()
        thread.join(60)
        requests_seen = list(proxy.state.requests)
    [error] = outcome
    assert isinstance(error, RegistryError)
    assert "was not written: the writer gave up" in str(error)
    methods = [line.split()[0] for line in requests_seen]
    # the session is cancelled and nothing is PUT; the proxy logs the PATCH when its body
    # ends, which the writer's failure cut short, so the two may come in either order
    assert sorted(methods[-2:]) == ["DELETE", "PATCH"] and "PUT" not in methods
    with client_for(plain_registry.host) as registry:
        assert not registry.has_blob("stream/c", writer.descriptor.digest)


BIG = "FROM scratch\nCOPY hello.txt /hello.txt\nCOPY big.bin /big.bin\n"


def test_a_run_streams_its_layers_and_a_second_run_sends_none_again(
    tmp_path: Path,
    dockerd: Dockerd,
    registry_factory: RegistryFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    upstream = registry_factory()
    with FaultProxy(f"http://{upstream.host}") as proxy:
        spec = f"version: 1\nregistries: [{proxy.host}/twice]\nimage: {{name: app}}\n"
        files: dict[str, str | bytes] = {"big.bin": os.urandom(3 * 1024 * 1024)}
        project = make_project(tmp_path / "project", spec, dockerfile=BIG, files=files)
        env = run_env(dockerd.host, tmp_path)
        code, first, err = run_shipit(["run", "-C", str(project), "--json"], capsys, env)
        assert code == 0, err
        with proxy.state.lock:
            seen_first = list(proxy.state.requests)
            proxy.state.requests.clear()
        code, second, err = run_shipit(["run", "-C", str(project), "--json"], capsys, env)
        assert code == 0, err
        seen_second = list(proxy.state.requests)
    # every blob (two layers and the config) was stored once; a layer still being written
    # when its upload began went as one streamed PATCH (usually both, but that is timing:
    # the stream itself is tested with a writer the test holds back, above)
    stored = [r for r in seen_first if r.startswith("PUT /v2/twice/app/blobs/uploads/")]
    assert len(stored) == 3, seen_first
    assert len([r for r in seen_first if r.startswith("PATCH ")]) <= 2
    blob_puts = [r for r in seen_second if r.startswith(("PATCH ", "PUT /v2/twice/app/blobs"))]
    assert blob_puts == [], seen_second  # nothing sent again: each blob had a HEAD first
    assert any(r.startswith("HEAD /v2/twice/app/blobs/") for r in seen_second)
    digests = {json.loads(out)["images"][0]["digest"] for out in (first, second)}
    assert len(digests) == 1


def test_layers_stream_through_basic_auth_and_tls_without_falling_back(
    tmp_path: Path,
    dockerd: Dockerd,
    auth_registry: RunningRegistry,
    tls_registry: RunningRegistry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = (
        "version: 1\nregistries:\n"
        f"  - url: {auth_registry.host}/streamed\n"
        f"    username: {auth_registry.username}\n"
        "    password_env: REGISTRY_PASSWORD\n"
        f"  - url: {tls_registry.host}/streamed\n"
        f"    ca_file: {tls_registry.ca_file}\n"
        "image: {name: app}\n"
    )
    files: dict[str, str | bytes] = {"big.bin": os.urandom(2 * 1024 * 1024)}
    project = make_project(tmp_path / "project", spec, dockerfile=BIG, files=files)
    env = run_env(dockerd.host, tmp_path, REGISTRY_PASSWORD=auth_registry.password or "")
    code, out, err = run_shipit(["run", "-C", str(project), "--json", "-v"], capsys, env)
    assert code == 0, err
    assert "streamed upload" not in err  # no upload had to fall back to the file
    [digest] = {ref["digest"] for ref in json.loads(out)["images"][0]["refs"]}
    assert digest is not None
