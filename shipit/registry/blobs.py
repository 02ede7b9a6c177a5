"""The blob calls of the `Registry` client: HEAD, upload (with its fallbacks), mount and read.

`upload_blob` skips a blob the repository has. An upload opens a session (POST), then sends
the whole blob in one PUT, streamed from its source and checked on the way
(`streaming.VerifiedBody`); a layer file whose descriptor the export stage computed is not
hashed again. A registry that refuses one big body (see `_wants_chunks`) gets the blob in
PATCHed chunks instead, from then on. An upload that fails midway is cancelled and started
over in a new session, with backoff. Between two repositories of one registry host a blob is
mounted (POST with `mount` and `from`) rather than sent again; a registry that declines the
mount opens a session for a normal upload instead. `read_blob` reads a small blob (a config)
whole, checked against its digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import requests

from shipit.registry.auth import delete_scope, pull_scope, push_scope
from shipit.registry.door import Door, join_location, with_query
from shipit.registry.endpoint import Endpoint
from shipit.registry.errors import RegistryError
from shipit.registry.oci import Descriptor, check_digest, compute_digest, short_digest
from shipit.registry.streaming import (
    STREAM_CHUNK,
    BlobSource,
    VerifiedBody,
    bytes_chunks,
    file_chunks,
    rechunk,
)
from shipit.registry.transport import Options

log = logging.getLogger(__name__)

DEFAULT_UPLOAD_CHUNK: Final = 16 * 1024 * 1024  # for registries that demand chunked uploads


def _wants_chunks(error: RegistryError) -> bool:
    """Whether a refused one-request upload (POST then PUT with the body) may pass in chunks.

    413: a proxy limits the body size. 405/501: no monolithic uploads. DIGEST_INVALID: the
    registry ignored the body (our bytes were checked against the digest before it was sent).
    """
    return error.status in (405, 413, 501) or (
        error.status == 400 and "DIGEST_INVALID" in error.message
    )


MIN_UPLOAD_CHUNK: Final = 256 * 1024  # chunks are never made smaller than this
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(MiB|MB|KiB|KB)\b")
_UNITS: Final = {"MiB": 1024 * 1024, "MB": 1000 * 1000, "KiB": 1024, "KB": 1000}


def smaller_chunk(error: RegistryError, size: int, minimum: int = 0) -> int | None:
    """The chunk size to try after a chunk of `size` bytes was refused as too large, or None.

    GHCR answers a PATCH over 4 MiB with 416 "the request body is too large and exceeds the
    maximum permissible limit of 4.00MiB" (wasmCloud/wash#268, oras-project/rust-oci-client#37);
    a proxy in front answers 413. The limit the message names is used, else half the size; never
    below the registry's `OCI-Chunk-Min-Length` (`minimum`) or MIN_UPLOAD_CHUNK.
    """
    if error.status not in (413, 416):
        return None
    if error.status == 416 and "too large" not in error.message.lower():
        return None  # a 416 for an offset or a format: not a matter of size
    limit = _SIZE_RE.search(error.message)
    wanted = size // 2
    if limit is not None:
        wanted = min(wanted, int(float(limit.group(1)) * _UNITS[limit.group(2)]))
    wanted = max(wanted, minimum, MIN_UPLOAD_CHUNK)
    return wanted if wanted < size else None


class BlobApi(Door):
    """Checking for, uploading, mounting and reading blobs."""

    def __init__(self, endpoint: Endpoint, options: Options) -> None:
        super().__init__(endpoint, options)
        self._chunk_size: int | None = None  # set when the registry demands chunked uploads
        self._chunk_minimum = 0  # the registry's OCI-Chunk-Min-Length

    def has_blob(self, repository: str, digest: str) -> bool:
        """Whether `repository` holds the blob `digest`."""
        repo = self.endpoint.repository(repository)
        what = f"blob {short_digest(check_digest(digest))} in {repo}"
        return self._exists(f"/v2/{repo}/blobs/{digest}", repo, what)

    def _start_upload(
        self, repo: str, *, what: str, mount: str | None = None, mount_from: str | None = None
    ) -> str | None:
        """Open an upload session and return its URL, or None when the blob was mounted.

        A mount asks for the source's pull with the target's push. A refused mount is an
        upload instead: distribution answers 401 `insufficient_scope` when the token lacks the
        source's pull (registry/handlers/app.go), Harbor 401 for a source project that does not
        exist (goharbor/harbor#17097), others 403 or 404."""
        target = f"/v2/{repo}/blobs/uploads/"
        scope: tuple[str, ...] = (push_scope(repo),)
        if mount is not None and mount_from is not None:
            target = with_query(target, {"mount": mount, "from": mount_from})
            scope = (push_scope(repo), pull_scope(mount_from))
        response = self._request("POST", target, scope=scope, what=what)
        if mount is not None and response.status_code in (401, 403, 404):
            log.debug(
                "%s refused %s (%d): uploading instead", self.host, what, response.status_code
            )
            response.close()
            return self._start_upload(repo, what=f"an upload to {repo}")
        with response:
            if response.status_code == 201 and mount is not None:
                return None
            if response.status_code != 202:
                raise self._error_for(response, what)
            location = response.headers.get("Location")
            if not location:
                raise self._protocol(f"{self.host} opened an upload without a Location header")
            minimum = response.headers.get("OCI-Chunk-Min-Length", "")
            if minimum.isdigit():  # only matters if we ever send chunks
                self._chunk_minimum = int(minimum)
            return join_location(response.url, location)

    def _cancel_upload(self, url: str, repo: str) -> None:
        """Cancel an upload session, as far as the account may: distribution asks for the
        `delete` action on every DELETE, an upload's too (registry/handlers/app.go), so an
        account that may push but not delete leaves the session to the registry's purge of
        old uploads. Never an error: nothing depends on it."""
        try:
            response = self._request(
                "DELETE", url, scope=(delete_scope(repo),), what="cancelling an upload", attempts=1
            )
            response.close()
        except RegistryError as exc:
            log.debug("could not cancel an upload session on %s: %s", self.host, exc)
            return
        if response.status_code not in (200, 202, 204, 404):
            log.debug(
                "%s kept an upload session of %s (%d to its DELETE): the registry's purge of"
                " old uploads removes it",
                self.host,
                repo,
                response.status_code,
            )

    def _mount(self, repo: str, digest: str, source_repo: str) -> str | None:
        """Mount `digest` from `source_repo`; None if mounted, else an upload session URL."""
        return self._start_upload(
            repo,
            what=f"mounting blob {short_digest(digest)} from {source_repo} into {repo}",
            mount=digest,
            mount_from=source_repo,
        )

    def upload_blob(
        self,
        repository: str,
        data: bytes | Path,
        *,
        known: Descriptor | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> Descriptor:
        """Store `data` (bytes, or a file streamed from disk) as a blob; skipped if present.

        Returns the blob's descriptor (media type "application/octet-stream": the manifest that
        refers to it names its real type). With `known` (digest and size computed when the
        file was written) the file is not hashed again; its size is still checked, and the
        registry checks the digest before it accepts the blob. `on_bytes` hears how many bytes
        of the blob are done so far (all of them at once when the registry had it already;
        from 0 again when an upload restarts).
        """
        repo = self.endpoint.repository(repository)
        check = True
        if known is not None and isinstance(data, Path):
            # hashed as it was written: not again for every registry (each checks it anyway)
            blob, source, check = known, file_chunks(data), False
        elif isinstance(data, Path):
            hasher = hashlib.sha256()
            with data.open("rb") as file:
                while chunk := file.read(STREAM_CHUNK):
                    hasher.update(chunk)
            blob = Descriptor(
                media_type="application/octet-stream",
                digest=f"sha256:{hasher.hexdigest()}",
                size=data.stat().st_size,
            )
            source = file_chunks(data)
        else:
            blob = Descriptor(
                media_type="application/octet-stream",
                digest=compute_digest(data),
                size=len(data),
            )
            source = bytes_chunks(data)
        if self.has_blob(repo, blob.digest):
            if on_bytes is not None:
                on_bytes(blob.size)
            return blob
        origin = f"file {data}" if isinstance(data, Path) else "memory"
        self._upload(
            repo, blob, source, origin=origin, origin_host=self.host, check=check, on_bytes=on_bytes
        )
        return blob

    def _upload(
        self,
        repo: str,
        blob: Descriptor,
        source: BlobSource,
        *,
        origin: str,
        origin_host: str,
        session: str | None = None,
        on_bytes: Callable[[int], None] | None = None,
        check: bool = True,
    ) -> None:
        """Stream `blob` from `source` into `repo`, restarting the upload session on failure.

        `session` is an upload session opened already (by a refused mount). A registry that
        refuses the blob in one request (see `_wants_chunks`) gets it in chunks instead.
        """
        attempt = 0
        while True:
            url = session or self._start_upload(repo, what=f"an upload to {repo}")
            session = None
            if url is None:  # pragma: no cover - only a mount returns None
                return
            try:
                self._upload_once(
                    url,
                    repo,
                    blob,
                    source,
                    origin=(origin, origin_host),
                    on_bytes=on_bytes,
                    check=check,
                )
            except RegistryError as error:
                self._cancel_upload(url, repo)
                what = f"{self.host}: upload of blob {short_digest(blob.digest)} to {repo}"
                if self._chunk_size is None and _wants_chunks(error):
                    self._chunk_size = max(DEFAULT_UPLOAD_CHUNK, self._chunk_minimum)
                    self._notify_retry(
                        f"{what} was refused in one request ({error.status}); sending it in chunks"
                    )
                    continue
                chunk = self._chunk_size
                smaller = (
                    None if chunk is None else smaller_chunk(error, chunk, self._chunk_minimum)
                )
                if smaller is not None:
                    self._chunk_size = smaller
                    self._notify_retry(
                        f"{what}: a chunk of {chunk} bytes was refused as too large "
                        f"({error.status}); sending chunks of {smaller} bytes"
                    )
                    continue
                if not error.transient or attempt >= self._retries:
                    raise
                self._wait_to_retry(
                    attempt,
                    self._retries,
                    f"{what} failed ({error.message}); restarting it in a new upload session,",
                )
                attempt += 1
            else:
                return

    def _upload_once(
        self,
        url: str,
        repo: str,
        blob: Descriptor,
        source: BlobSource,
        *,
        origin: tuple[str, str],
        on_bytes: Callable[[int], None] | None,
        check: bool = True,
    ) -> None:
        what = f"the upload of blob {short_digest(blob.digest)} to {repo}"
        with source() as chunks:
            body = VerifiedBody(
                chunks, blob, origin=origin[0], host=origin[1], on_bytes=on_bytes, check=check
            )
            if self._chunk_size is not None:
                final = self._send_chunks(url, body, repo, what)
                data: VerifiedBody | bytes = b""
            elif blob.size == 0:
                final, data = url, b""
                list(body)  # checks that the empty blob has the digest of nothing
            else:
                final, data = url, body
            self._put_blob(final, repo, blob.digest, data, what)

    def _put_blob(
        self, url: str, repo: str, digest: str, data: VerifiedBody | bytes, what: str
    ) -> None:
        """The PUT that closes an upload session with the blob's digest (and the last bytes,
        if any); the registry must store it under that digest."""
        put = self._request(
            "PUT",
            with_query(url, {"digest": digest}),
            scope=(push_scope(repo),),
            headers={"Content-Type": "application/octet-stream"},
            data=data,
            what=what,
            attempts=1,
        )
        with put:
            if put.status_code not in (201, 204):
                raise self._error_for(put, what)
            reported = put.headers.get("Docker-Content-Digest")
            if reported is not None and reported != digest:
                raise self._protocol(f"{self.host} stored blob {digest} as {reported}")

    def _blob_source(self, repository: str, blob: Descriptor) -> BlobSource:
        """Opens a streaming GET of `blob` each time it is called (once per upload attempt)."""

        @contextlib.contextmanager
        def chunks() -> Iterator[Iterator[bytes]]:
            with self._open_blob(repository, blob) as response:
                yield response.iter_content(STREAM_CHUNK)

        return chunks

    def _send_chunks(self, url: str, body: VerifiedBody, repo: str, what: str) -> str:
        """PATCH the blob in chunks of `_chunk_size`; returns the URL to finish the upload."""
        size = self._chunk_size or DEFAULT_UPLOAD_CHUNK
        offset = 0
        for piece in rechunk(body, size):
            response = self._request(
                "PATCH",
                url,
                scope=(push_scope(repo),),
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{offset}-{offset + len(piece) - 1}",
                },
                data=piece,
                what=what,
                attempts=1,
            )
            with response:
                # 201, not the spec's 202: Amazon ECR (aws/containers-roadmap#2831; regclient
                # accepts it too, "Accept a 201 on chunk upload for ECR")
                if response.status_code not in (201, 202):
                    raise self._error_for(response, what)
                url = join_location(response.url, response.headers.get("Location") or url)
            offset += len(piece)
        return url

    def read_blob(
        self, repository: str, blob: Descriptor | str, *, limit: int = 4 * 1024 * 1024
    ) -> bytes:
        """The bytes of a small blob (an image config, a leg record), given by its descriptor
        or its digest, checked against its digest (and its size, when known); larger than
        `limit` bytes is an error."""
        if isinstance(blob, str):
            check_digest(blob)
            blob = Descriptor(media_type="application/octet-stream", digest=blob, size=-1)
        repo = self._api_repo(repository)
        what = f"blob {short_digest(blob.digest)} in {repo}"
        if blob.size > limit:
            raise self._protocol(f"{what} has {blob.size} bytes, more than {limit} to read")
        chunks: list[bytes] = []
        total = 0
        with self._open_blob(repository, blob) as response:
            try:
                for chunk in response.iter_content(STREAM_CHUNK):
                    total += len(chunk)
                    if total > limit:
                        raise self._protocol(f"{what} on {self.host} is larger than {limit} bytes")
                    chunks.append(chunk)
            except requests.RequestException as exc:
                raise self._transport_error(exc)[0] from exc
        data = b"".join(chunks)
        algorithm = blob.digest.split(":", 1)[0]
        size_known = blob.size >= 0
        if compute_digest(data, algorithm) != blob.digest or (
            size_known and len(data) != blob.size
        ):
            raise self._protocol(f"{what} on {self.host} does not match its digest and size")
        return data

    def download_blob(self, repository: str, blob: Descriptor, path: Path) -> None:
        """Write the blob `blob` (its digest and size) to the file `path`, streamed and checked
        on the way (`VerifiedBody`); raises `RegistryError` when it does not match (the file
        then holds what came, without its last chunk, for the caller to remove)."""
        check_digest(blob.digest)
        with self._open_blob(repository, blob) as response, path.open("wb") as out:
            body = VerifiedBody(
                response.iter_content(STREAM_CHUNK),
                blob,
                origin=f"{self.host}/{self._api_repo(repository)}",
                host=self.host,
                on_bytes=None,
            )
            for chunk in body:
                out.write(chunk)

    def _open_blob(self, repository: str, blob: Descriptor) -> requests.Response:
        """A streaming GET of `blob` (the caller closes it)."""
        repo = self._api_repo(repository)
        what = f"blob {short_digest(blob.digest)} in {repo}"
        response = self._request(
            "GET",
            f"/v2/{repo}/blobs/{blob.digest}",
            scope=(pull_scope(repo),),
            stream=True,
            what=what,
        )
        if response.status_code != 200:
            with response:
                raise self._error_for(response, what)
        return response

    def _api_repo(self, repository: str) -> str:
        return self.endpoint.repository(repository)
