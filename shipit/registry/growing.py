"""Uploading a blob while it is still being written: a layer on its way during compression.

`upload_growing` opens an upload session (POST), sends the bytes in one PATCH as they reach
the file (a streamed body, chunked transfer encoding, no Content-Range: the "stream upload" of
distribution's API, docs/spec/api.md, "PATCH Blob Upload", which is also how `docker push`
sends a layer), and, once the writer knows the blob's digest, closes the session with an
empty PUT `?digest=`; the registry checks that digest against the bytes it got before it
accepts the blob. So each registry receives a layer while it is compressed, instead of after.

When anything on that way fails (a registry or proxy that refuses streamed bodies, a reset
connection), the session is cancelled and the finished file is uploaded as any other blob
(`upload_blob`: HEAD first, then one request, or chunks, with new sessions and backoff), so
a failure costs time, never the blob. A blob that is finished before its upload starts goes
that usual way from the start, HEAD included, and so does one the caller asks to `follow=False`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from shipit.registry.auth import push_scope
from shipit.registry.blobs import BlobApi
from shipit.registry.door import join_location
from shipit.registry.errors import RegistryError
from shipit.registry.oci import Descriptor, short_digest
from shipit.registry.streaming import STREAM_CHUNK, GrowingFile, SourceFailed


class GrowingUploads(BlobApi):
    """`BlobApi` plus `upload_growing`."""

    def upload_growing(
        self,
        repository: str,
        blob: GrowingFile,
        *,
        follow: bool = True,
        on_bytes: Callable[[int], None] | None = None,
    ) -> Descriptor:
        """Store the blob `blob`'s writer is writing, following the file as it grows.

        Raises `RegistryError` as `upload_blob` does, and also when the writer gives up (then
        there is no blob to store). `on_bytes` hears how many bytes are done so far.
        """
        if not follow or blob.finished:
            return self._upload_finished(repository, blob, on_bytes)
        repo = self.endpoint.repository(repository)
        url: str | None = None
        try:
            url = self._start_upload(repo, what=f"an upload to {repo}")
            assert url is not None  # noqa: S101 - only a mount returns None
            url = self._patch_following(url, repo, blob, on_bytes)
            descriptor = blob.result()
            self._close_session(url, repo, descriptor)
        except SourceFailed as exc:
            if url is not None:
                self._cancel_upload(url, repo)
            raise self._protocol(f"the blob for {repo} was not written: {exc}") from None
        except RegistryError as error:
            if url is not None:
                self._cancel_upload(url, repo)
            self._notify_retry(
                f"{self.host}: the streamed upload to {repo} failed ({error.message});"
                " uploading the finished file instead"
            )
            return self._upload_finished(repository, blob, on_bytes)
        if on_bytes is not None:
            on_bytes(descriptor.size)
        return descriptor

    def _upload_finished(
        self, repository: str, blob: GrowingFile, on_bytes: Callable[[int], None] | None
    ) -> Descriptor:
        try:
            descriptor = blob.result()
        except SourceFailed as exc:
            raise self._protocol(f"the blob for {repository} was not written: {exc}") from None
        if on_bytes is not None:
            on_bytes(0)  # any bytes counted for a failed stream start over
        return self.upload_blob(repository, blob.path, known=descriptor, on_bytes=on_bytes)

    def _patch_following(
        self, url: str, repo: str, blob: GrowingFile, on_bytes: Callable[[int], None] | None
    ) -> str:
        """PATCH the whole blob as it is written; returns the URL that closes the session."""
        what = f"the streamed upload to {repo}"
        response = self._request(
            "PATCH",
            url,
            scope=(push_scope(repo),),
            headers={"Content-Type": "application/octet-stream"},
            data=_counted(blob.follow(), on_bytes),
            what=what,
            attempts=1,
        )
        with response:
            if response.status_code not in (201, 202):  # ECR: 201 (aws/containers-roadmap#2831)
                raise self._error_for(response, what)
            location = response.headers.get("Location")
            if not location:
                raise self._protocol(f"{self.host} took a PATCH without a Location header")
            return join_location(response.url, location)

    def _close_session(self, url: str, repo: str, descriptor: Descriptor) -> None:
        what = f"the upload of blob {short_digest(descriptor.digest)} to {repo}"
        self._put_blob(url, repo, descriptor.digest, b"", what)


def _counted(chunks: Iterator[bytes], on_bytes: Callable[[int], None] | None) -> Iterator[bytes]:
    """`chunks`, telling `on_bytes` how far they got about once a MiB (pieces are small)."""
    done = told = 0
    for chunk in chunks:
        yield chunk
        done += len(chunk)
        if on_bytes is not None and done - told >= STREAM_CHUNK:
            on_bytes(done)
            told = done
