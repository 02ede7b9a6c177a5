"""The receiver a daemon on the containerd store pushes an image to (stages.receive): the calls
of distribution's API a push makes, each blob checked against its digest, layers announced
while they come, and the image it gives, the same as `docker save`'s way gives."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
import requests

from shipit.docker_api import DaemonError
from shipit.registry import GrowingFile, SourceFailed
from shipit.stages.export import ExportError, export_image
from shipit.stages.receive import ReceiveError, Receiver, receive_export, received_image
from tests.unit.test_export import config_for, layer_tar, save_stream, sha

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
GZIP_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


class Image:
    """An image as the containerd store holds it: gzipped layers, a config, an OCI manifest."""

    def __init__(self, *sizes: int) -> None:
        self.plain = [layer_tar({f"f{i}": os.urandom(size)}) for i, size in enumerate(sizes)]
        self.layers = [gzip.compress(p, compresslevel=1, mtime=0) for p in self.plain]
        self.config = config_for(self.plain)
        self.manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha(self.config),
                    "size": len(self.config),
                },
                "layers": [
                    {"mediaType": GZIP_LAYER, "digest": sha(x), "size": len(x)} for x in self.layers
                ],
            }
        ).encode()
        self.id = sha(self.manifest)


def push(host: str, image: Image, tag: str, *, patch: bool = False) -> None:
    """Push `image` as containerd's pusher does (POST, then the blob in the PUT naming its
    digest), or, with `patch`, as other clients do (a chunked PATCH, then an empty PUT)."""
    base = f"http://{host}/v2/shipit/export"
    for blob in [*image.layers, image.config]:
        assert requests.head(f"{base}/blobs/{sha(blob)}", timeout=10).status_code == 404
        started = requests.post(f"{base}/blobs/uploads/", timeout=10)
        assert started.status_code == 202
        location = f"http://{host}{started.headers['Location']}"
        if patch:
            pieces = (blob[i : i + 100_000] for i in range(0, len(blob), 100_000))
            assert requests.patch(location, data=pieces, timeout=10).status_code == 202
            body = b""
        else:
            body = blob
        done = requests.put(location, params={"digest": sha(blob)}, data=body, timeout=10)
        assert done.status_code == 201, done.text
        assert done.headers["Docker-Content-Digest"] == sha(blob)
        assert requests.head(f"{base}/blobs/{sha(blob)}", timeout=10).status_code == 200
    put = requests.put(
        f"{base}/manifests/{tag}",
        data=image.manifest,
        headers={"Content-Type": OCI_MANIFEST},
        timeout=10,
    )
    assert put.status_code == 201
    assert put.headers["Docker-Content-Digest"] == image.id


@pytest.mark.parametrize("patch", [False, True], ids=["put-body", "chunked-patch"])
def test_a_pushed_image_is_received_whole_and_its_big_layers_announced_as_they_come(
    tmp_path: Path, patch: bool
) -> None:
    image = Image(3 * 1024 * 1024, 1000)  # one layer past the announcement's MiB, one not
    announced: list[GrowingFile] = []
    followed: list[bytes] = []

    def follow(blob: GrowingFile) -> None:
        announced.append(blob)
        reader = threading.Thread(target=lambda: followed.append(b"".join(blob.follow())))
        reader.start()

    with Receiver(tmp_path / "in", follow) as receiver:
        push(receiver.host, image, "t1", patch=patch)
        received = receiver.received()
    assert [b.result().digest for b in announced] == [sha(image.layers[0])]
    assert received.announced == {sha(image.layers[0])}
    exported = received_image(received, image.id, "t1", oci=False)
    assert exported.config == image.config
    assert [layer.descriptor.digest for layer in exported.layers] == [sha(x) for x in image.layers]
    assert [layer.diff_id for layer in exported.layers] == [sha(x) for x in image.plain]
    assert [layer.path.read_bytes() for layer in exported.layers] == image.layers
    assert exported.id_manifest == image.manifest
    for _ in range(100):
        if followed:
            break
        threading.Event().wait(0.05)
    assert followed == [image.layers[0]]


def test_the_image_received_has_the_manifest_the_docker_save_way_gives(tmp_path: Path) -> None:
    image = Image(2 * 1024 * 1024, 5000)
    with Receiver(tmp_path / "in", lambda blob: None) as receiver:
        push(receiver.host, image, "t1")
        received = receiver.received()
    hexes = [sha(x).removeprefix("sha256:") for x in image.layers]
    saved = save_stream(
        [
            ("blobs/sha256/" + image.id.removeprefix("sha256:"), image.manifest),
            ("blobs/sha256/" + sha(image.config).removeprefix("sha256:"), image.config),
            *[(f"blobs/sha256/{h}", data) for h, data in zip(hexes, image.layers, strict=True)],
            ("manifest.json", json.dumps([{
                "Config": "blobs/sha256/" + sha(image.config).removeprefix("sha256:"),
                "Layers": [f"blobs/sha256/{h}" for h in hexes]}]).encode()),
        ]
    )  # fmt: skip
    for oci in (False, True):
        by_save = export_image(saved, image.id, tmp_path / f"save-{oci}", oci=oci)
        by_push = received_image(received, image.id, "t1", oci=oci)
        assert by_push.manifest == by_save.manifest
        assert by_push.id_manifest == by_save.id_manifest


def test_a_blob_that_does_not_match_its_digest_is_refused_and_its_readers_stop(
    tmp_path: Path,
) -> None:
    announced: list[GrowingFile] = []
    data = os.urandom(2 * 1024 * 1024)
    with Receiver(tmp_path / "in", announced.append) as receiver:
        base = f"http://{receiver.host}/v2/shipit/export/blobs/uploads/"
        location = requests.post(base, timeout=10).headers["Location"]
        url = f"http://{receiver.host}{location}"
        refused = requests.put(url, params={"digest": sha(b"other")}, data=data, timeout=10)
        assert refused.status_code == 400
        assert refused.json()["errors"][0]["code"] == "DIGEST_INVALID"
        assert receiver.received().blobs == {}
    assert announced == []  # random bytes are not gzip: never announced
    gz = gzip.compress(data, compresslevel=1)
    with Receiver(tmp_path / "in2", announced.append) as receiver:
        base = f"http://{receiver.host}/v2/shipit/export/blobs/uploads/"
        url = f"http://{receiver.host}{requests.post(base, timeout=10).headers['Location']}"
        assert (
            requests.put(url, params={"digest": sha(b"x")}, data=gz, timeout=10).status_code == 400
        )
    [blob] = announced
    with pytest.raises(SourceFailed, match="as sha256:"):
        blob.result()


def test_a_tls_handshake_is_answered_in_plain_http_so_the_daemon_falls_back_to_it(
    tmp_path: Path,
) -> None:
    # containerd's resolver goes over to HTTP when the answer to its ClientHello starts
    # with "HTTP/" (remotes/docker, HTTPFallback)
    with Receiver(tmp_path / "in", lambda blob: None) as receiver:
        host, port = receiver.host.split(":")
        with socket.create_connection((host, int(port)), timeout=10) as conn:
            conn.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(32))
            assert conn.recv(5) == b"HTTP/"
        assert requests.get(f"http://{receiver.host}/v2/", timeout=10).status_code == 200


def pushed(tmp_path: Path, image: Image, manifest: bytes | None = None) -> Any:
    with Receiver(tmp_path / "in", lambda blob: None) as receiver:
        push(receiver.host, image, "t1")
        if manifest is not None:
            requests.put(f"http://{receiver.host}/v2/shipit/export/manifests/t1", data=manifest,
                         headers={"Content-Type": OCI_MANIFEST}, timeout=10)  # fmt: skip
        return receiver.received()


def test_only_the_image_built_is_taken_and_only_with_gzip_layers(tmp_path: Path) -> None:
    image = Image(1000, 2000)
    received = pushed(tmp_path / "a", image)
    with pytest.raises(ReceiveError, match="for sha256:0000"):
        received_image(received, "sha256:" + "0" * 64, "t1", oci=False)
    with pytest.raises(ReceiveError, match="sent no manifest"):
        received_image(received, image.id, "t2", oci=False)
    document = json.loads(image.manifest)
    document["layers"][0]["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd"
    zstd = json.dumps(document).encode()
    with pytest.raises(ReceiveError, match="zstd, not gzip"):
        received_image(pushed(tmp_path / "b", image, zstd), sha(zstd), "t1", oci=False)
    document["layers"] = document["layers"][:1]
    short = json.dumps(document).encode()
    with pytest.raises(ReceiveError, match="lists 1 layers, the config 2"):
        received_image(pushed(tmp_path / "c", image, short), sha(short), "t1", oci=False)
    assert issubclass(ReceiveError, ExportError)


class FakeDaemon:
    """The few calls `receive_export` makes of a daemon, with a push that goes nowhere."""

    host = "unix:///run/fake.sock"

    def __init__(self, *, store: bool = True, tags: list[str] | None = None) -> None:
        self.store = store
        self.tags = ["app:1"] if tags is None else tags
        self.calls: list[str] = []

    def describe(self) -> Any:
        return type("Info", (), {"containerd_store": self.store})()

    def inspect(self, image: str) -> dict[str, Any]:
        return {"RepoTags": self.tags}

    def tag(self, image: str, repository: str, tag: str) -> None:
        self.calls.append(f"tag {repository}:{tag}")

    def untag(self, ref: str) -> None:
        self.calls.append(f"untag {ref}")

    def push(self, ref: str) -> None:
        self.calls.append(f"push {ref}")
        raise DaemonError("dial tcp 127.0.0.1:1: connect: connection refused")


def test_the_way_is_not_taken_where_it_cannot_be_and_a_refused_push_falls_back(
    tmp_path: Path,
) -> None:
    def export(daemon: FakeDaemon) -> Any:
        return receive_export(daemon, "sha256:" + "a" * 64, tmp_path, lambda b: None, oci=False)  # type: ignore[arg-type]

    classic = FakeDaemon(store=False)
    assert export(classic) is None and classic.calls == []
    remote = FakeDaemon()
    remote.host = "tcp://docker:2375"
    assert export(remote) is None and remote.calls == []
    nameless = FakeDaemon(tags=[])  # untagging the receiver's name would delete the image
    assert export(nameless) is None and nameless.calls == []
    unreachable = FakeDaemon()  # a rootless daemon: 127.0.0.1 is its own
    assert export(unreachable) is None
    tagged, pushed_ref, untagged = unreachable.calls
    assert tagged.startswith("tag 127.0.0.1:") and pushed_ref == f"push {tagged[4:]}"
    assert untagged == f"untag {tagged[4:]}"


def test_the_digest_of_the_receivers_blob_is_checked_whatever_the_client_says(
    tmp_path: Path,
) -> None:
    body = gzip.compress(os.urandom(10))
    with Receiver(tmp_path / "in", lambda blob: None) as receiver:
        url = f"http://{receiver.host}/v2/shipit/export/blobs/uploads/?digest={sha(body)}"
        assert requests.post(url, data=body, timeout=10).status_code == 201
        assert receiver.has_blob(sha(body)) == len(body)
        bad = f"http://{receiver.host}/v2/shipit/export/blobs/uploads/?digest=md5:abc"
        assert requests.post(bad, data=body, timeout=10).status_code == 400
    assert hashlib.sha256(body).hexdigest() in sha(body)
