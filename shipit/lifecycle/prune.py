"""`shipit prune`: the retention policy of every image, in every registry of the spec.

`make_plan` reads each repository (`inventory`), decides (`retention`, with the tags the
spec always keeps from `protect`) and returns a `PrunePlan`: a dry run prints it and changes
nothing. `apply` carries a plan out (`apply`), a fresh one or one saved with `--json` and
read back with `--plan`; a saved plan is applied only to repositories the spec still has.
Repositories are read and pruned one after another, each with up to `push.parallel`
requests at once and `push.retries` retries.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shipit.errors import ShipitError, UsageError
from shipit.lifecycle.apis import DeletePath, open_path
from shipit.lifecycle.apply import RepositoryResult, apply_plan
from shipit.lifecycle.inventory import read_holdings
from shipit.lifecycle.limit import DeleteLimit, refusal_hint, refusals
from shipit.lifecycle.protect import protected_tags
from shipit.lifecycle.records import PrunePlan, RepositoryPlan, short
from shipit.lifecycle.report import rule_warnings
from shipit.lifecycle.retention import decide, idle_rules
from shipit.log import Console, counted
from shipit.plan import ImagePlan, Plan
from shipit.registry import Endpoint, Registry, RegistryError
from shipit.spec import Image, Spec
from shipit.spec import Registry as SpecRegistry
from shipit.stages import preflight


@dataclass(frozen=True, kw_only=True)
class PruneResult:
    """What `--apply` did in every repository."""

    plan: PrunePlan
    repositories: tuple[RepositoryResult, ...]
    started: datetime
    finished: datetime

    @property
    def complete(self) -> bool:
        return all(r.complete for r in self.repositories)


class Clients:
    """One registry client per spec registry url (credentials resolved and masked), and the
    path deletes take there (`lifecycle.apis`)."""

    def __init__(self, env: Mapping[str, str], console: Console) -> None:
        self.env, self.console = env, console
        self._open: dict[str, Registry] = {}
        self._paths: dict[str, DeletePath] = {}
        self._lock = threading.Lock()

    def path(self, registry: SpecRegistry, image: Image) -> DeletePath:
        """How deletes are done in `registry`: its own API, or the vendor's."""
        with self._lock:
            if registry.url not in self._paths:
                client = self._get(registry, image)
                retry = _retry_line(self.console, registry.url)
                try:
                    self._paths[registry.url] = open_path(registry, client, self.env, retry)
                except RegistryError as error:  # an API that shipit will not send a token to
                    raise UsageError(f"registry {registry.url}: {error}") from None
            return self._paths[registry.url]

    def get(self, registry: SpecRegistry, image: Image) -> Registry:
        with self._lock:
            return self._get(registry, image)

    def _get(self, registry: SpecRegistry, image: Image) -> Registry:
        if registry.url not in self._open:
            credentials = preflight.credentials_for(registry, self.env)
            if credentials is not None:
                self.console.secret(credentials.password)
            endpoint = Endpoint(
                host=registry.host,
                insecure=registry.insecure,
                ca_file=registry.ca_file,
                credentials=credentials,
            )
            self._open[registry.url] = Registry(
                endpoint,
                retries=image.push.retries,
                on_retry=_retry_line(self.console, registry.url),
            )
        return self._open[registry.url]

    def close(self) -> None:
        for path in self._paths.values():
            path.close()
        for client in self._open.values():
            client.close()


def make_plan(
    spec: Spec,
    plan: Plan,
    values: Callable[[ImagePlan], Mapping[str, Any]],
    clients: Clients,
    console: Console,
    *,
    now: datetime | None = None,
) -> PrunePlan:
    """Read every repository of the images that have a `retention:` and decide."""
    when = now or datetime.now(UTC)
    repositories: list[RepositoryPlan] = []
    for image_plan in plan.images:
        image = image_plan.image
        policy = image.retention
        if policy is None:
            console.write(f"{image.name}: no retention policy, nothing to prune")
            continue
        planned = image_plan.tags if not image_plan.skipped else ()
        protected = protected_tags(image, values(image_plan), planned)
        for registry in image.registries:
            repository = registry.repository(image.name)
            try:
                holdings = read_holdings(
                    clients.get(registry, image),
                    registry=registry.url,
                    repository=repository,
                    parallel=image.push.parallel,
                )
            except RegistryError as error:
                repositories.append(_unreadable(image, registry, repository, str(error)))
                continue
            actions = decide(holdings, policy, protected, when)
            goes = any(a.action != "keep" for a in actions)
            path = clients.path(registry, image)
            repositories.append(
                RepositoryPlan(
                    image=image.name,
                    registry=registry.url,
                    host=registry.host,
                    repository=repository,
                    tags=dict(holdings.tags),
                    actions=actions,
                    warnings=idle_rules(holdings, policy) if goes else (),
                    api=path.api,
                    blocked=path.check(repository) if goes else None,
                )
            )
    return PrunePlan(spec=str(spec.path), made=when, repositories=tuple(repositories))


class PruneRefusedError(ShipitError):
    """The plan deletes more than `--max-delete` allows: nothing was deleted (exit 1)."""


def apply(
    spec: Spec, plan: PrunePlan, clients: Clients, console: Console, limit: DeleteLimit
) -> PruneResult:
    """Carry out `plan`, repository by repository; a refusing registry does not stop the rest.
    Nothing at all is done when the plan of any repository goes past `limit`."""
    owners = _owners(spec)
    for repository in plan.repositories:
        if (repository.registry, repository.repository) not in owners:
            raise UsageError(
                f"the plan prunes {repository.ref} in {repository.registry}, which is not an"
                f" image of {spec.path} any more",
                hint="make the plan again with `shipit prune --json`",
            )
    for warning in rule_warnings(plan):
        console.warn(warning)
    refused = refusals(plan.repositories, limit)
    if refused:
        lines = "\n".join(f"  {r}" for r in refused)
        raise PruneRefusedError(
            f"prune --apply refused, nothing was deleted:\n{lines}", hint=refusal_hint(refused)
        )
    started = datetime.now(UTC)
    results: list[RepositoryResult] = []
    for repository in plan.repositories:
        image, registry = owners[(repository.registry, repository.repository)]
        deletes = repository.count("delete") + repository.count("untag")
        with console.group(f"prune {repository.ref}: {counted(deletes, 'change')}"):
            result = apply_plan(
                clients.get(registry, image),
                clients.path(registry, image),
                repository,
                parallel=image.push.parallel,
            )
            if result.error:
                console.error(result.error)
            for outcome in result.outcomes:
                if outcome.action.action != "keep":
                    tags = " ".join(outcome.action.tags)
                    console.write(f"{outcome.status}  {short(outcome.action.digest)} {tags}")
        results.append(result)
    return PruneResult(
        plan=plan, repositories=tuple(results), started=started, finished=datetime.now(UTC)
    )


def _owners(spec: Spec) -> dict[tuple[str, str], tuple[Image, SpecRegistry]]:
    return {
        (registry.url, registry.repository(image.name)): (image, registry)
        for image in spec.images
        if image.retention is not None
        for registry in image.registries
    }


def _unreadable(
    image: Image, registry: SpecRegistry, repository: str, error: str
) -> RepositoryPlan:
    return RepositoryPlan(
        image=image.name, registry=registry.url, host=registry.host, repository=repository,
        tags={}, actions=(), error=f"{registry.url}: cannot read {repository}: {error}",
    )  # fmt: skip


def _retry_line(console: Console, url: str) -> Callable[[str], None]:
    def line(text: str) -> None:
        console.write(f"retry {url}: {text}")

    return line
