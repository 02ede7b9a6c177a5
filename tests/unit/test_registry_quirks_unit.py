"""The pure parts of shipit's handling of hosted registries' quirks: what an answer means."""

from __future__ import annotations

import json

import pytest

from shipit.registry import OCI_MANIFEST, Manifest, RegistryError
from shipit.registry.blobs import MIN_UPLOAD_CHUNK, smaller_chunk
from shipit.registry.errors import registry_answer_error, says_rate_limited
from shipit.registry.manifests import MAX_MANIFEST_BYTES, check_manifest_size

MiB = 1024 * 1024
GHCR_416 = (
    "ghcr.io answered 416 Requested Range Not Satisfiable to the upload: "
    "REQUESTED_RANGE_NOT_SATISFIABLE: the request body is too large and exceeds the maximum "
    "permissible limit of 4.00MiB"
)


def error(status: int, message: str) -> RegistryError:
    return RegistryError(message, host="r.example", kind="protocol", status=status)


class TestSmallerChunk:
    def test_the_limit_the_message_names(self) -> None:
        assert smaller_chunk(error(416, GHCR_416), 16 * MiB) == 4 * MiB

    def test_half_when_no_limit_is_named(self) -> None:
        assert smaller_chunk(error(413, "Request Entity Too Large"), 16 * MiB) == 8 * MiB

    def test_never_below_the_registrys_minimum(self) -> None:
        assert smaller_chunk(error(416, GHCR_416), 16 * MiB, minimum=5 * MiB) == 5 * MiB
        assert smaller_chunk(error(416, GHCR_416), 5 * MiB, minimum=5 * MiB) is None

    def test_never_below_the_floor(self) -> None:
        assert smaller_chunk(error(413, "too large"), MIN_UPLOAD_CHUNK) is None

    @pytest.mark.parametrize(
        ("status", "message"),
        [(416, "BLOB_UPLOAD_INVALID: chunk is smaller than 5242880 bytes"), (400, "too large")],
    )
    def test_other_refusals_are_not_a_matter_of_size(self, status: int, message: str) -> None:
        assert smaller_chunk(error(status, message), 16 * MiB) is None


class TestAnswers:
    def test_name_unknown_says_to_create_the_repository(self) -> None:
        detail = ": NAME_UNKNOWN: The repository with name 'team/app' does not exist"
        found = registry_answer_error(404, detail, "a push to team/app", host="ecr.example")
        assert found is not None and found.kind == "not_found"
        assert "ecr.example" in found.message and "team/app" in found.message
        assert "aws ecr create-repository" in found.message

    @pytest.mark.parametrize(
        ("status", "detail"),
        [
            (400, ": TAG_INVALID: The image tag 'v1' already exists ... the tag is immutable."),
            (412, ": DENIED: The tag:lib/app:v1 is immutable, cannot be overwrite."),
            (403, ": DENIED: tag v1 is immutable"),
        ],
    )
    def test_an_immutable_tag(self, status: int, detail: str) -> None:
        found = registry_answer_error(status, detail, "writing the manifest a:v1", host="h")
        assert found is not None and found.kind == "denied" and "immutable" in found.message
        assert "publish under a new tag" in found.message

    def test_a_manifest_too_large(self) -> None:
        found = registry_answer_error(413, "", "writing the manifest a:v1", host="h")
        assert found is not None and "4 MiB" in found.message

    def test_a_rate_limit_403_is_not_a_permission_error(self) -> None:
        detail = ": DENIED: You have exceeded a secondary rate limit."
        found = registry_answer_error(403, detail, "writing the manifest a:v1", host="h")
        assert found is not None and found.kind == "server" and found.transient
        assert says_rate_limited(403, detail) and says_rate_limited(429, "HAP429")
        assert not says_rate_limited(403, ": DENIED: requested access to the resource is denied")

    def test_plain_answers_are_left_to_the_status(self) -> None:
        assert registry_answer_error(404, ": MANIFEST_UNKNOWN", "x", host="h") is None
        assert registry_answer_error(403, ": DENIED: no", "x", host="h") is None
        assert registry_answer_error(400, ": DIGEST_INVALID", "x", host="h") is None


def test_a_manifest_over_4_mib_is_refused_before_it_is_sent() -> None:
    document = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}
    fits = Manifest.from_bytes(json.dumps(document).encode(), OCI_MANIFEST)
    check_manifest_size(fits, host="h")
    document["annotations"] = {"pad": "x" * MAX_MANIFEST_BYTES}
    big = Manifest.from_bytes(json.dumps(document).encode(), OCI_MANIFEST)
    with pytest.raises(RegistryError, match="more than the 4194304 bytes"):
        check_manifest_size(big, host="h")
