"""The daemon's image listing an SDK build's memo asks for first is started in preflight only
where a warm build could use it: an SDK image, shipit's cache on, a build recorded in it (a
fresh runner has none, and the listing would only keep the daemon busy while it builds)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from shipit.stages.build import Engines
from shipit.stages.build.memo import FOLDER


class _Daemon:
    def __init__(self) -> None:
        self.listings = 0

    def list_image_ids_ahead(self) -> None:
        self.listings += 1


def _engines(env: dict[str, str]) -> tuple[Engines, _Daemon]:
    engines = Engines(env)
    daemon = _Daemon()
    engines._daemons[None] = daemon  # type: ignore[assignment]  # the run's own daemon
    return engines, daemon


def _images(*engines: str) -> list[Any]:
    return [SimpleNamespace(build=SimpleNamespace(engine=e)) for e in engines]


def test_the_listing_starts_only_where_a_recorded_sdk_build_could_use_it(tmp_path: Path) -> None:
    env = {"SHIPIT_CACHE_DIR": str(tmp_path / "cache")}
    engines, daemon = _engines(env)
    engines.look_ahead(_images("sdk"))
    assert daemon.listings == 0  # no cache folder yet: a fresh runner
    (tmp_path / "cache" / FOLDER).mkdir(parents=True)
    engines.look_ahead(_images("sdk"))
    assert daemon.listings == 0  # no build recorded
    (tmp_path / "cache" / FOLDER / "record.json").write_text("{}")
    engines.look_ahead(_images("buildx", "buildah"))
    assert daemon.listings == 0  # no SDK image
    engines.look_ahead(_images("buildx", "sdk"))
    assert daemon.listings == 1
    off, daemon = _engines({"SHIPIT_CACHE_DIR": "off"})
    off.look_ahead(_images("sdk"))
    assert daemon.listings == 0  # no cache, no memo
