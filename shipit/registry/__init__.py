"""A client for the OCI distribution API that copies images between registries byte for byte.

shipit pushes an image through the Docker daemon once, to a seed registry, and copies it from
there to every other registry with this module (DESIGN section 4, step 6): the compressed blobs
and the exact manifest bytes travel unchanged, so every registry stores the same digest, and that
digest is what shipit signs. Inside one registry host, blobs are mounted across repositories
instead of copied.

Why not `oras` (oras-py, the OCI registry client on PyPI): it is made to push local files as
artifacts, not to copy between registries. Its blob upload takes a file path and reads the whole
file into memory, it has no cross-repository mount, and its retry decorator retries only a 500,
with fixed sleeps (no 429/Retry-After, no new upload session after a failure midway). It does
have a per-registry CA and the bearer dance, but those are the small part of the job, so this
module speaks the protocol on `requests` itself.

Every request goes through one door (`Registry._request`): the bearer or basic authentication
dance, retries with bounded exponential backoff and jitter, and a debug log line without
credentials or query strings. Errors are `RegistryError`s whose message names the host and says
what to do next; no password or token ever reaches a message, a log line or a repr.
"""

from shipit.registry.auth import Challenge, parse_www_authenticate
from shipit.registry.client import Registry
from shipit.registry.door import join_location, with_query
from shipit.registry.endpoint import (
    DOCKER_HUB_HOSTS,
    Credentials,
    Endpoint,
    candidate_schemes,
    is_loopback_host,
)
from shipit.registry.errors import ErrorKind, RegistryError, redact
from shipit.registry.image_copy import BlobProgress, CopyResult, copy_image
from shipit.registry.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    IMAGE_MEDIA_TYPES,
    INDEX_MEDIA_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Manifest,
)
from shipit.registry.retry import is_retryable_status, parse_retry_after, retry_delay

__all__ = [
    "DOCKER_HUB_HOSTS",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "IMAGE_MEDIA_TYPES",
    "INDEX_MEDIA_TYPES",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "BlobProgress",
    "Challenge",
    "CopyResult",
    "Credentials",
    "Descriptor",
    "Endpoint",
    "ErrorKind",
    "Manifest",
    "Registry",
    "RegistryError",
    "candidate_schemes",
    "copy_image",
    "is_loopback_host",
    "is_retryable_status",
    "join_location",
    "parse_retry_after",
    "parse_www_authenticate",
    "redact",
    "retry_delay",
    "with_query",
]
