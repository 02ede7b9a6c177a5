"""shipit.registry against real registries (CNCF distribution, Debian's docker-registry).

Images are made here with the client itself, no Docker: random bytes as gzip layers, a config
JSON and a schema 2 or OCI manifest (or an OCI index of two of them).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import secrets
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest

from shipit.registry import (
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    BlobProgress,
    Credentials,
    Descriptor,
    Endpoint,
    Manifest,
    Registry,
    RegistryError,
    copy_image,
)
from tests.support import services

LAYER_TYPES = {
    DOCKER_MANIFEST: "application/vnd.docker.image.rootfs.diff.tar.gzip",
    OCI_MANIFEST: "application/vnd.oci.image.layer.v1.tar+gzip",
}
CONFIG_TYPES = {
    DOCKER_MANIFEST: "application/vnd.docker.container.image.v1+json",
    OCI_MANIFEST: "application/vnd.oci.image.config.v1+json",
}


def client(
    server: services.Registry,
    *,
    credentials: Credentials | None = None,
    ca: bool = True,
    insecure: bool = False,
    retries: int = 2,
) -> Registry:
    if credentials is None and server.username is not None and server.password is not None:
        credentials = Credentials(username=server.username, password=server.password)
    endpoint = Endpoint(
        host=server.host,
        ca_file=server.ca_file if ca else None,
        insecure=insecure,
        credentials=credentials,
    )
    return Registry(endpoint, retries=retries, backoff=0.05)


def repo_name(prefix: str = "app") -> str:
    return f"shipit-test/{prefix}-{secrets.token_hex(4)}"


def gzip_layer(size: int) -> bytes:
    return gzip.compress(os.urandom(size), compresslevel=1)


def descriptor(blob: Descriptor, media_type: str) -> dict[str, object]:
    return {"mediaType": media_type, "digest": blob.digest, "size": blob.size}


@dataclass
class Image:
    manifest: Manifest
    blobs: dict[str, bytes]  # digest -> bytes, config and layers


def push_image(
    registry: Registry,
    repo: str,
    *,
    tag: str | None = "v1",
    layers: list[bytes | Path] | None = None,
    media_type: str = DOCKER_MANIFEST,
    architecture: str = "amd64",
) -> Image:
    """A small image (or one with the given layers) built and pushed with the client."""
    contents: list[bytes | Path] = (
        layers if layers is not None else [gzip_layer(40_000), gzip_layer(3_000)]
    )
    blobs: dict[str, bytes] = {}
    layer_descriptors = []
    for content in contents:
        blob = registry.upload_blob(repo, content)
        if isinstance(content, bytes):
            blobs[blob.digest] = content
        layer_descriptors.append(descriptor(blob, LAYER_TYPES[media_type]))
    config = json.dumps(
        {
            "architecture": architecture,
            "os": "linux",
            "config": {"Labels": {"nonce": secrets.token_hex(8)}},
            "rootfs": {"type": "layers", "diff_ids": []},
        }
    ).encode()
    config_blob = registry.upload_blob(repo, config)
    blobs[config_blob.digest] = config
    document = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config_blob, CONFIG_TYPES[media_type]),
        "layers": layer_descriptors,
    }
    # not json.dumps' default spacing: the copy must keep these exact bytes
    manifest = Manifest.from_bytes(json.dumps(document, indent=3).encode(), media_type)
    registry.put_manifest(repo, tag or manifest.digest, manifest)
    return Image(manifest, blobs)


def read_blob(registry: Registry, repo: str, digest: str) -> bytes:
    blob = Descriptor(media_type="", digest=digest, size=0)
    with registry._open_blob(repo, blob) as response:
        return response.content


def assert_copied(image: Image, target: Registry, repo: str, tag: str) -> None:
    stored = target.manifest(repo, tag)
    assert stored.data == image.manifest.data
    assert stored.digest == image.manifest.digest
    assert stored.media_type == image.manifest.media_type
    for digest, data in image.blobs.items():
        assert target.has_blob(repo, digest)
        assert read_blob(target, repo, digest) == data


@pytest.fixture(scope="module")
def second_registry(registry_factory: services.RegistryFactory) -> services.Registry:
    """Another plain registry: the target of copies between two hosts."""
    return registry_factory()


# --------------------------------------------------------------------------- copies


def test_copy_to_another_registry(
    plain_registry: services.Registry, second_registry: services.Registry
) -> None:
    source, target = client(plain_registry), client(second_registry)
    src, dst = repo_name(), repo_name()
    image = push_image(source, src)
    events: list[BlobProgress] = []

    result = copy_image(
        source, src, image.manifest.digest, target, dst, ["v1", "latest"], on_progress=events.append
    )

    assert result.digest == image.manifest.digest
    assert result.ref == f"{second_registry.host}/{dst}@{image.manifest.digest}"
    assert result.tags == ("v1", "latest")
    assert sorted(result.blobs_copied) == sorted(image.blobs)
    assert result.blobs_mounted == result.blobs_skipped == ()
    assert result.bytes_copied == sum(len(b) for b in image.blobs.values())
    for tag in ("v1", "latest", image.manifest.digest):
        assert_copied(image, target, dst, tag)
    assert sorted(target.tags(dst)) == ["latest", "v1"]
    finished = {e.digest for e in events if e.action == "copy" and e.done == e.size}
    assert finished == set(image.blobs)


def test_a_second_copy_is_a_no_op(
    plain_registry: services.Registry, second_registry: services.Registry
) -> None:
    source, target = client(plain_registry), client(second_registry)
    src, dst = repo_name(), repo_name()
    image = push_image(source, src)
    first = copy_image(source, src, image.manifest.digest, target, dst, ["v1"])

    again = copy_image(source, src, image.manifest.digest, target, dst, ["v1", "v2"])

    assert again.digest == first.digest == image.manifest.digest
    assert again.blobs_copied == again.blobs_mounted == ()
    assert sorted(again.blobs_skipped) == sorted(image.blobs)
    assert again.bytes_copied == 0
    assert again.tags == ("v1", "v2")
    assert target.manifest(dst, "v2").digest == image.manifest.digest


def test_blobs_the_target_has_are_skipped(
    plain_registry: services.Registry, second_registry: services.Registry
) -> None:
    source, target = client(plain_registry), client(second_registry)
    src, dst = repo_name(), repo_name()
    shared = gzip_layer(10_000)
    target.upload_blob(dst, shared)
    image = push_image(source, src, layers=[shared, gzip_layer(5_000)])

    result = copy_image(source, src, image.manifest.digest, target, dst, ["v1"])

    shared_digest = next(d for d, b in image.blobs.items() if b == shared)
    assert list(result.blobs_skipped) == [shared_digest]
    assert len(result.blobs_copied) == 2  # the other layer and the config
    assert_copied(image, target, dst, "v1")


def test_copy_within_one_host_mounts(
    plain_registry: services.Registry, caplog: pytest.LogCaptureFixture
) -> None:
    source = client(plain_registry)
    target = client(plain_registry)  # another client of the same host, as the push stage has
    src, dst = repo_name("src"), repo_name("dst")
    image = push_image(source, src)

    with caplog.at_level(logging.DEBUG, logger="shipit.registry"):
        result = copy_image(source, src, image.manifest.digest, target, dst, ["v1"])

    assert sorted(result.blobs_mounted) == sorted(image.blobs)
    assert result.blobs_copied == ()
    assert result.bytes_copied == 0
    requests_sent = [r.getMessage() for r in caplog.records]
    assert len([m for m in requests_sent if m.startswith("POST")]) == len(image.blobs)
    assert not [m for m in requests_sent if m.startswith(("PUT", "PATCH")) and "/blobs/" in m]
    assert not [m for m in requests_sent if m.startswith("GET") and "/blobs/" in m]
    assert_copied(image, target, dst, "v1")


def test_oci_index_is_copied_whole(
    plain_registry: services.Registry, second_registry: services.Registry
) -> None:
    source, target = client(plain_registry), client(second_registry)
    src, dst = repo_name(), repo_name()
    children = [
        push_image(source, src, tag=None, media_type=OCI_MANIFEST, architecture=arch)
        for arch in ("amd64", "arm64")
    ]
    index_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": child.manifest.digest,
                "size": len(child.manifest.data),
                "platform": {"os": "linux", "architecture": arch},
            }
            for child, arch in zip(children, ("amd64", "arm64"), strict=True)
        ],
    }
    index = Manifest.from_bytes(json.dumps(index_doc).encode(), OCI_INDEX)
    source.put_manifest(src, "multi", index)

    result = copy_image(source, src, index.digest, target, dst, ["multi"])

    assert result.digest == index.digest
    assert result.media_type == OCI_INDEX
    assert sorted(result.manifests) == sorted(c.manifest.digest for c in children)
    stored = target.manifest(dst, "multi")
    assert stored.data == index.data
    for child in children:
        assert_copied(child, target, dst, child.manifest.digest)

    again = copy_image(source, src, index.digest, target, dst, ["multi"])
    assert again.manifests == again.blobs_copied == ()
    assert len(again.blobs_skipped) == sum(len(c.blobs) for c in children)


def test_chunked_upload_to_a_real_registry(
    plain_registry: services.Registry, second_registry: services.Registry
) -> None:
    source, target = client(plain_registry), client(second_registry)
    target._chunk_size = 256 * 1024  # as if the registry demanded chunks
    src, dst = repo_name(), repo_name()
    image = push_image(source, src, layers=[gzip_layer(700_000)])

    copy_image(source, src, image.manifest.digest, target, dst, ["v1"])

    assert_copied(image, target, dst, "v1")


def test_the_copy_streams(
    plain_registry: services.Registry, second_registry: services.Registry, tmp_path: Path
) -> None:
    """A 64 MB layer goes through without ever being held whole in memory."""
    size = 64 * 1024 * 1024
    layer = tmp_path / "layer.tar.gz"
    with gzip.open(layer, "wb", compresslevel=1) as out:
        for _ in range(size // (1024 * 1024)):
            out.write(os.urandom(1024 * 1024))
    source, target = client(plain_registry), client(second_registry)
    src, dst = repo_name(), repo_name()
    image = push_image(source, src, layers=[layer])

    tracemalloc.start()
    try:
        started = time.monotonic()
        result = copy_image(source, src, image.manifest.digest, target, dst, ["v1"])
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.bytes_copied > size
    assert peak < 16 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.0f} MB blob"
    print(f"copied {result.bytes_copied / 1e6:.0f} MB in {elapsed:.2f}s, peak {peak / 1e6:.1f} MB")
    assert target.manifest(dst, "v1").digest == image.manifest.digest


# --------------------------------------------------------------------------- TLS


def test_copy_to_tls_registry_with_ca_file(
    plain_registry: services.Registry, tls_registry: services.Registry
) -> None:
    source, target = client(plain_registry), client(tls_registry)
    src, dst = repo_name(), repo_name()
    image = push_image(source, src)
    target.check_push_access(dst)

    result = copy_image(source, src, image.manifest.digest, target, dst, ["v1"])

    assert target._scheme == "https"
    assert result.digest == image.manifest.digest
    assert_copied(image, target, dst, "v1")


def test_tls_registry_without_its_ca(tls_registry: services.Registry) -> None:
    with pytest.raises(RegistryError) as caught:
        client(tls_registry, ca=False).check_push_access("shipit-test/app")
    assert caught.value.kind == "tls"
    assert tls_registry.host in str(caught.value)
    assert "ca_file" in str(caught.value)


def test_tls_registry_insecure(
    tls_registry: services.Registry, caplog: pytest.LogCaptureFixture
) -> None:
    registry = client(tls_registry, ca=False, insecure=True)
    with caplog.at_level(logging.WARNING, logger="shipit.registry"):
        registry.check_push_access("shipit-test/app")
    assert registry._scheme == "https"
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


# --------------------------------------------------------------------------- auth


def test_copy_to_auth_registry(
    plain_registry: services.Registry, auth_registry: services.Registry
) -> None:
    source, target = client(plain_registry), client(auth_registry)
    src, dst = repo_name(), repo_name()
    image = push_image(source, src)
    target.check_push_access(dst)

    result = copy_image(source, src, image.manifest.digest, target, dst, ["v1"])

    assert result.digest == image.manifest.digest
    assert_copied(image, target, dst, "v1")


def test_wrong_credentials(
    plain_registry: services.Registry,
    auth_registry: services.Registry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert auth_registry.password is not None
    wrong = Credentials(username="shipit", password="wrong-" + auth_registry.password)
    target = client(auth_registry, credentials=wrong)
    dst = repo_name()

    with (
        caplog.at_level(logging.DEBUG, logger="shipit.registry"),
        pytest.raises(RegistryError) as caught,
    ):
        target.check_push_access(dst)
    assert caught.value.kind == "auth"
    assert caught.value.status == 401
    assert caught.value.host == auth_registry.host
    assert auth_registry.host in str(caught.value)
    assert "shipit" in str(caught.value)
    assert wrong.password not in str(caught.value) + repr(caught.value)
    assert not [r for r in caplog.records if "/blobs/uploads" in r.getMessage()]
    assert all(wrong.password not in r.getMessage() for r in caplog.records)

    source = client(plain_registry)
    src = repo_name()
    image = push_image(source, src)
    with pytest.raises(RegistryError) as caught:
        copy_image(source, src, image.manifest.digest, target, dst, ["v1"])
    assert caught.value.kind == "auth"
    good = client(auth_registry)
    assert not any(good.has_blob(dst, d) for d in image.blobs)


def test_missing_credentials(auth_registry: services.Registry) -> None:
    anonymous = Registry(Endpoint(host=auth_registry.host))
    with pytest.raises(RegistryError, match="asks for credentials") as caught:
        anonymous.check_push_access("shipit-test/app")
    assert caught.value.kind == "auth"


# --------------------------------------------------------------------------- odds and ends


def test_unknown_manifest_and_tags(plain_registry: services.Registry) -> None:
    registry = client(plain_registry)
    repo = repo_name()
    assert registry.tags(repo) == []
    with pytest.raises(RegistryError) as caught:
        registry.manifest(repo, "nope")
    assert caught.value.kind == "not_found"
    assert caught.value.status == 404
    assert not registry.has_blob(repo, "sha256:" + "0" * 64)


def test_concurrent_copies_share_a_source(
    plain_registry: services.Registry,
    second_registry: services.Registry,
    tls_registry: services.Registry,
) -> None:
    """The push stage copies to every registry at once from one source client."""
    from concurrent.futures import ThreadPoolExecutor

    source = client(plain_registry)
    src = repo_name()
    image = push_image(source, src)
    targets = [client(second_registry), client(tls_registry), client(plain_registry)]

    def copy(target: Registry) -> str:
        return copy_image(source, src, image.manifest.digest, target, repo_name(), ["v1"]).digest

    with ThreadPoolExecutor(len(targets)) as pool:
        digests = list(pool.map(copy, targets))
    assert digests == [image.manifest.digest] * len(targets)
