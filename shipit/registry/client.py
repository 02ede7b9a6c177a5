"""`Registry`: the client of one registry host, over the OCI distribution API.

The class is assembled from layers, each in its own module, each building on the one before:
`transport.Transport` (the session, sending, retries, errors), `auth.Authenticating` (bearer
tokens and basic auth), `door.Door` (the scheme, and `_request`, the door of every call), then
the calls themselves in `manifests.ManifestApi`, `blobs.BlobApi` (with `growing.GrowingUploads`,
a blob uploaded while it is still being written), `deletes.DeleteApi` and
`referrers.ReferrersApi`. Here are the constructor,
the preflight check and the lifetime of the session.
"""

from __future__ import annotations

from collections.abc import Callable

from shipit.registry.deletes import DeleteApi
from shipit.registry.endpoint import Endpoint
from shipit.registry.errors import RegistryError
from shipit.registry.growing import GrowingUploads
from shipit.registry.manifests import ManifestApi
from shipit.registry.referrers import ReferrersApi
from shipit.registry.transport import Options


class Registry(ManifestApi, GrowingUploads, DeleteApi, ReferrersApi):
    """One registry host, spoken to over the OCI distribution API.

    Safe to share between threads: the push stage uploads several blobs to one registry through
    one client at once, and copies may read one source client in parallel. Repository names
    are given as users write them; Docker Hub's single-name repositories become `library/NAME`.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        retries: int = 3,
        backoff: float = 0.5,
        timeout: float = 30,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        options = Options(retries=retries, backoff=backoff, timeout=timeout, on_retry=on_retry)
        super().__init__(endpoint, options)

    def __repr__(self) -> str:
        user = self.endpoint.credentials.username if self.endpoint.credentials else None
        return f"Registry(host={self.host!r}, insecure={self.endpoint.insecure}, user={user!r})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def check_push_access(self, repository: str) -> None:
        """Preflight: the registry answers `/v2/` and the credentials may push to `repository`.

        Pushing is proven by opening an upload session (and cancelling it): registries grant
        tokens with less access than asked for without complaint, so a token alone proves little.
        """
        repo = self.endpoint.repository(repository)
        response = self._request("GET", "/v2/", what="the registry API at /v2/")
        with response:
            if response.status_code != 200:
                if response.status_code == 404:
                    raise RegistryError(
                        f"{self.host} does not serve the registry API at /v2/ (404): "
                        "check the registry host name",
                        host=self.host,
                        kind="protocol",
                        status=404,
                    )
                raise self._error_for(response, "access to the registry API at /v2/")
        location = self._start_upload(repo, what=f"a push to {repo}")
        if location is not None:
            self._cancel_upload(location, repo)
