"""shipit's own client for the OCI distribution API: its one door to container registries.

shipit does not push through the Docker daemon. The export stage takes the image out of the
daemon once and compresses each layer once (`shipit.stages.export`; on the containerd image
store the daemon pushes it once, to shipit itself, `shipit.stages.receive`); the push stage then
uploads those same blobs and the same manifest bytes itself, with this package, to every
registry in parallel (`shipit.stages.push`). So every registry stores the same digest, and that
digest is what shipit signs. For further repositories on a registry host that already has the
image, `copy_image` mounts the blobs across repositories instead of uploading them again; it
copies an image between two registries byte for byte just as well.

The modules, from the bottom up (each imports only those above it):

    endpoint    which registry and as whom: `Endpoint`, `Credentials`, Docker Hub, loopback
    oci         media types, digests, `Descriptor` and `Manifest`
    retry       which failures to retry and how long to wait (429, 5xx, Retry-After, backoff)
    errors      `RegistryError`, made from a registry's answer or a failed exchange
    transport   the HTTP session of one registry: one logged exchange, and its retries
    auth        `WWW-Authenticate` challenges, bearer tokens (cached per scope), basic auth
    door        the scheme, and `_request`, which every API call goes through
    manifests   manifest and tag calls: get, HEAD, put, list
    streaming   where a blob's bytes come from (a `GrowingFile` too), and the check on the way
    blobs       blob calls: HEAD, upload (one request, chunks, a new session), mount, read
    growing     a blob uploaded while its file is still being written (a streamed PATCH)
    deletes     where a reference points now (HEAD); deleting manifests by digest, and tags
    referrers   the OCI referrers API (`GET /v2/<name>/referrers/<digest>`), and its index
    client      `Registry`, assembled from transport, auth, door and the calls above
    image_copy  `copy_image`, and what it reports

Errors are `RegistryError`s whose message names the host and says what to do next; no
password or token ever reaches a message, a log line or a repr.

Why not `oras` (oras-py, the OCI registry client on PyPI; read at version 0.2.43, in
`oras/provider.py` and `oras/decorator.py`): it is made to push local files as artifacts, not
to copy between registries. Its blob upload takes a file path and reads the whole file into
memory, it has no cross-repository mount, and its retry decorator retries only a 500 among the
statuses, on a fixed schedule of sleeps (no 429/Retry-After, no new upload session after a
failure midway). It does have a per-registry CA and the bearer dance, but those are the small
part of the job, so this package speaks the protocol on `requests` itself.
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
    DIGEST_RE,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    IMAGE_MEDIA_TYPES,
    INDEX_MEDIA_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    TAG_RE,
    Descriptor,
    Manifest,
    compute_digest,
    short_digest,
)
from shipit.registry.referrers import Referrer, parse_referrers
from shipit.registry.retry import is_retryable_status, parse_retry_after, retry_delay
from shipit.registry.streaming import GrowingFile, SourceFailed

__all__ = [
    "DIGEST_RE",
    "DOCKER_HUB_HOSTS",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "IMAGE_MEDIA_TYPES",
    "INDEX_MEDIA_TYPES",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "TAG_RE",
    "BlobProgress",
    "Challenge",
    "CopyResult",
    "Credentials",
    "Descriptor",
    "Endpoint",
    "ErrorKind",
    "GrowingFile",
    "Manifest",
    "Referrer",
    "Registry",
    "RegistryError",
    "SourceFailed",
    "candidate_schemes",
    "compute_digest",
    "copy_image",
    "is_loopback_host",
    "is_retryable_status",
    "join_location",
    "parse_referrers",
    "parse_retry_after",
    "parse_www_authenticate",
    "redact",
    "retry_delay",
    "short_digest",
    "with_query",
]
