"""Write tiny Trivy vulnerability databases (and root filesystems to scan) for offline tests.

Trivy cannot download its database on a machine without internet, but it reads one from
``--cache-dir`` when run with ``--skip-db-update``. The database is a bbolt file, and no
package on PyPI writes valid ones, so this module has its own small writer.

bbolt file format
=================

Every layout detail below comes from etcd-io/bbolt's own source; the file named in each
comment is where to look. All integers are little-endian (bbolt maps the file and reads its
structs in place, so the layout is the in-memory layout of the Go structs on amd64/arm64).

* The file is a row of pages of ``page_size`` bytes. Page ``n`` starts at ``n * page_size``.
  A page that needs more room spans ``1 + overflow`` consecutive pages; only the first one
  has a header (internal/common/page.go, ``Page``)::

      id u64 | flags u16 | count u16 | overflow u32          (16 bytes)

  flags: branch 0x01, leaf 0x02, meta 0x04, freelist 0x10 (page.go). bbolt checks that the
  ``id`` in the header equals the page number it read (page.go, ``FastCheck``).
* Pages 0 and 1 are meta pages; bbolt uses the valid one with the higher ``txid``. The meta
  struct follows the page header (internal/common/meta.go, ``Meta``)::

      magic u32 = 0xED0CDAED | version u32 = 2 | page_size u32 | flags u32
      root bucket {root pgid u64, sequence u64} | freelist pgid u64
      pgid u64 (high-water mark = number of pages in the file) | txid u64 | checksum u64

  ``checksum`` is FNV-1a 64 over the 56 bytes before it (meta.go, ``Sum64``); the magic and
  version constants are in internal/common/types.go.
* The freelist page holds ``count`` page ids (u64) after its header; a fresh database has an
  empty one (internal/freelist/shared.go, ``Read``/``Write``; db.go ``init``).
* A leaf page holds ``count`` elements of 16 bytes, then the keys and values they point to
  (page.go, ``leafPageElement``)::

      flags u32 (0x01 = the value is a nested bucket) | pos u32 | ksize u32 | vsize u32

  ``pos`` is measured from the start of *that element*, not from the page (page.go,
  ``Key``/``Value``); the value follows the key directly. bbolt writes all elements first,
  then all key/value data packed in element order (node.go, ``write``).
* A branch page holds elements ``pos u32 | ksize u32 | pgid u64`` (page.go,
  ``branchPageElement``); each points at a child page, and its key is the child's first key
  (node.go, ``write``; cursor.go searches branch keys for the last key <= the one sought).
* Keys inside a page, and across the pages of a bucket, are sorted bytewise (cursor.go does a
  binary search with ``bytes.Compare``).
* A bucket's value in its parent leaf is ``{root pgid u64, sequence u64}``
  (internal/common/bucket.go, ``InBucket``). When ``root`` is 0 an inline page image follows
  (bucket.go, ``openBucket``): page header with id 0 and overflow 0, then a leaf page's
  elements and data (bucket.go ``write``). bbolt inlines a bucket that has no nested buckets
  and whose page image is at most a quarter page (bucket.go ``inlineable``); this writer
  does the same by default, and can instead give every bucket its own root page, which bbolt
  reads just as well.
* The meta's root bucket is the bucket whose leaf elements are the top-level buckets
  (db.go, ``init``: a fresh database is meta, meta, empty freelist, empty root leaf).

This writer builds a fresh database in one go: metas at pages 0 and 1 (txid 0 and 1, as
db.go ``init`` writes them), an empty freelist at page 2, then the pages of every bucket
(children before parents), and nothing free: the meta's high-water mark is the file's size.
Buckets whose content does not fit one page are split into several leaf pages under branch
pages; a single key/value larger than a page gets a page with overflow pages. Anything
bbolt itself would refuse (empty keys, keys over 32 KiB, values over 2 GiB) raises
``ValueError`` (non-bytes content ``TypeError``) instead of writing a file Trivy would choke
on.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PAGE_SIZE = 4096

MAGIC = 0xED0CDAED  # internal/common/types.go
VERSION = 2  # internal/common/types.go

BRANCH_PAGE = 0x01  # internal/common/page.go
LEAF_PAGE = 0x02
META_PAGE = 0x04
FREELIST_PAGE = 0x10
BUCKET_LEAF_FLAG = 0x01  # internal/common/page.go: leaf element flag of a nested bucket

PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
LEAF_ELEMENT = struct.Struct("<IIII")  # flags, pos, ksize, vsize
BRANCH_ELEMENT = struct.Struct("<IIQ")  # pos, ksize, pgid
IN_BUCKET = struct.Struct("<QQ")  # root pgid, sequence
# magic, version, page size, flags, root {pgid, sequence}, freelist, pgid (high-water), txid
META_FIELDS = struct.Struct("<IIIIQQQQQ")

MAX_KEY_SIZE = 32768  # bucket.go: MaxKeySize
MAX_VALUE_SIZE = (1 << 31) - 2  # bucket.go: MaxValueSize
MAX_PAGE_COUNT = 0xFFFF  # page.go: count is a u16

FIRST_DATA_PAGE = 3  # 0 and 1 are metas, 2 the freelist

# One leaf entry: key, (leaf flags or, in a branch, the child pgid; value).
_Entry = tuple[bytes, tuple[int, bytes]]


def fnv1a_64(data: bytes) -> int:
    """FNV-1a 64-bit hash, what Go's hash/fnv New64a computes (meta checksum)."""
    h = 0xCBF29CE484222325
    for byte in data:
        h ^= byte
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _meta_page(pgid: int, *, root: int, freelist: int, high_water: int, txid: int) -> bytes:
    fields = META_FIELDS.pack(MAGIC, VERSION, PAGE_SIZE, 0, root, 0, freelist, high_water, txid)
    meta = fields + struct.pack("<Q", fnv1a_64(fields))
    page = PAGE_HEADER.pack(pgid, META_PAGE, 0, 0) + meta
    return page.ljust(PAGE_SIZE, b"\0")


class _PageAllocator:
    """Hands out page ids from page 3 on and keeps the page images in order."""

    def __init__(self) -> None:
        self.next_pgid = FIRST_DATA_PAGE
        self.images: list[bytes] = []

    def write(self, flags: int, count: int, body: bytes) -> int:
        """Store one (possibly overflowing) page whose content after the header is ``body``."""
        if count > MAX_PAGE_COUNT:  # cannot happen with the splitting below, but never wrap
            raise ValueError(f"bbolt page would hold {count} elements (max {MAX_PAGE_COUNT})")
        size = PAGE_HEADER.size + len(body)
        npages = -(-size // PAGE_SIZE)
        pgid = self.next_pgid
        header = PAGE_HEADER.pack(pgid, flags, count, npages - 1)
        self.images.append((header + body).ljust(npages * PAGE_SIZE, b"\0"))
        self.next_pgid += npages
        return pgid


def _node_body(element: struct.Struct, entries: list[_Entry]) -> bytes:
    """Lay out a leaf or branch page body: all elements, then the packed key/value data.

    ``entries`` holds (key, (leaf flags or child pgid, value)) in key order. As in bbolt's
    node.go ``write``, each element's ``pos`` counts from the element's own offset.
    """
    elements = bytearray()
    data = bytearray()
    table_size = element.size * len(entries)
    for index, (key, (extra, value)) in enumerate(entries):
        pos = table_size + len(data) - index * element.size
        if element is LEAF_ELEMENT:
            elements += LEAF_ELEMENT.pack(extra, pos, len(key), len(value))
            data += key + value
        else:
            elements += BRANCH_ELEMENT.pack(pos, len(key), extra)
            data += key
    return bytes(elements + data)


def _split(sizes: list[int]) -> list[tuple[int, int]]:
    """Cut a run of elements into page groups: [(start, end), ...].

    A group is closed when the next element would not fit in its page, but only once it
    holds two elements (bbolt's ``MinKeysPerPage``, page.go); a group over a page becomes a
    page with overflow pages. So every group but the last holds two or more elements, and
    each level of branch pages is smaller than the one below: the tree always ends in a
    single root page, even when keys are bigger than a page.
    """
    groups: list[tuple[int, int]] = []
    start, used = 0, PAGE_HEADER.size
    for index, size in enumerate(sizes):
        if index - start >= 2 and used + size > PAGE_SIZE:
            groups.append((start, index))
            start, used = index, PAGE_HEADER.size
        used += size
    groups.append((start, len(sizes)))
    return groups


def _bucket_entries(
    content: Mapping[bytes, object],
    path: str,
    write_child: Callable[[Mapping[bytes, object], str], bytes],
) -> list[_Entry]:
    """Check a bucket's keys and values and return its leaf entries in bytewise key order.

    ``write_child`` turns a nested bucket into the value stored under its key.
    """
    entries: list[_Entry] = []
    seen: set[bytes] = set()
    for raw_key, value in content.items():
        if not isinstance(raw_key, bytes | bytearray):
            raise TypeError(f"bucket {path!r}: keys must be bytes, got {raw_key!r}")
        key = bytes(raw_key)
        if not key:
            raise ValueError(f"bucket {path!r}: bbolt does not allow empty keys")
        if len(key) > MAX_KEY_SIZE:
            raise ValueError(f"bucket {path!r}: key of {len(key)} bytes (max {MAX_KEY_SIZE})")
        if key in seen:
            raise ValueError(f"bucket {path!r}: duplicate key {key!r}")
        seen.add(key)
        if isinstance(value, Mapping):
            child_path = f"{path}/{key.decode(errors='replace')}"
            entries.append((key, (BUCKET_LEAF_FLAG, write_child(value, child_path))))
        elif isinstance(value, bytes | bytearray | memoryview):
            data = bytes(value)
            if len(data) > MAX_VALUE_SIZE:
                raise ValueError(f"bucket {path!r}: value of {len(data)} bytes is too large")
            entries.append((key, (0, data)))
        else:
            raise TypeError(f"bucket {path!r}, key {key!r}: value must be bytes or a mapping")
    entries.sort(key=lambda entry: entry[0])
    return entries


def _write_tree(pages: _PageAllocator, entries: list[_Entry]) -> int:
    """Write a bucket's sorted entries as a B+tree of pages; return the root page id."""
    if not entries:  # an empty bucket is one empty leaf page, as in a fresh database
        return pages.write(LEAF_PAGE, 0, b"")
    # Leaf level first, then as many branch levels as it takes to end with one root page.
    sizes = [LEAF_ELEMENT.size + len(k) + len(v) for k, (_, v) in entries]
    level: list[tuple[bytes, int]] = []
    for start, end in _split(sizes):
        body = _node_body(LEAF_ELEMENT, entries[start:end])
        level.append((entries[start][0], pages.write(LEAF_PAGE, end - start, body)))
    while len(level) > 1:
        children: list[_Entry] = [(key, (pgid, b"")) for key, pgid in level]
        sizes = [BRANCH_ELEMENT.size + len(key) for key, _ in level]
        groups = _split(sizes)
        if len(groups) >= len(level):  # cannot happen (see _split); never loop forever
            raise AssertionError("bbolt writer bug: a level of branch pages did not shrink")
        level = []
        for start, end in groups:
            body = _node_body(BRANCH_ELEMENT, children[start:end])
            level.append((children[start][0], pages.write(BRANCH_PAGE, end - start, body)))
    return level[0][1]


def _inline_size(entries: list[_Entry]) -> int | None:
    """The inline page size of a bucket bbolt would store inline, else None.

    bucket.go ``inlineable``: only buckets without nested buckets whose single leaf page
    (header + elements + data) is at most a quarter of a page are stored inline.
    """
    size = PAGE_HEADER.size
    for key, (flags, value) in entries:
        if flags & BUCKET_LEAF_FLAG:
            return None
        size += LEAF_ELEMENT.size + len(key) + len(value)
    return size if size <= PAGE_SIZE // 4 else None


def _make_bucket_writer(
    pages: _PageAllocator, *, inline: bool
) -> Callable[[Mapping[bytes, object], str], bytes]:
    def bucket_value(content: Mapping[bytes, object], path: str) -> bytes:
        """The value a nested bucket has in its parent's leaf: InBucket [+ inline page]."""
        entries = _bucket_entries(content, path, bucket_value)
        if inline and _inline_size(entries) is not None:
            # bucket.go ``write``: header {root 0, sequence}, then a leaf page image whose
            # header keeps id 0 and overflow 0 (node.go ``write`` sets only flags and count).
            page = PAGE_HEADER.pack(0, LEAF_PAGE, len(entries), 0)
            return IN_BUCKET.pack(0, 0) + page + _node_body(LEAF_ELEMENT, entries)
        return IN_BUCKET.pack(_write_tree(pages, entries), 0)

    return bucket_value


def write_bolt(
    path: Path,
    buckets: Mapping[bytes, Mapping[bytes, bytes | Mapping[bytes, Any]]],
    *,
    inline_buckets: bool = True,
) -> None:
    """Write a fresh bbolt database holding ``buckets``.

    ``buckets`` maps top-level bucket names to their content; in a bucket, a value that is a
    mapping is a nested bucket (recursively) and any other value must be bytes. Top-level
    entries must all be buckets, as bbolt allows nothing else in its root. Small nested
    buckets without buckets of their own are stored inline in their parent, as bbolt does,
    unless ``inline_buckets`` is false (then every bucket gets its own root page).
    """
    for name, content in buckets.items():
        if not isinstance(content, Mapping):
            raise TypeError(f"top-level entry {name!r} must be a bucket (a mapping)")
    pages = _PageAllocator()
    bucket_value = _make_bucket_writer(pages, inline=inline_buckets)
    root = _write_tree(pages, _bucket_entries(buckets, "", bucket_value))
    high_water = pages.next_pgid

    freelist = PAGE_HEADER.pack(2, FREELIST_PAGE, 0, 0).ljust(PAGE_SIZE, b"\0")
    metas = [
        _meta_page(pgid, root=root, freelist=2, high_water=high_water, txid=pgid) for pgid in (0, 1)
    ]
    image = b"".join([*metas, freelist, *pages.images])
    if len(image) != high_water * PAGE_SIZE:  # the page ids and the bytes must agree
        raise AssertionError("bbolt writer bug: page count does not match the file size")
    path.write_bytes(image)


# --- Trivy's database on top of bbolt ---------------------------------------------------------

# What trivy-db's vulnsrc packages store under "data-source" for the OS families tests use.
KNOWN_DATA_SOURCES = {
    "debian": {
        "ID": "debian",
        "Name": "Debian Security Tracker",
        "URL": "https://salsa.debian.org/security-tracker-team/security-tracker",
    },
    "alpine": {
        "ID": "alpine",
        "Name": "Alpine Secdb",
        "URL": "https://secdb.alpinelinux.org/",
    },
}

SEVERITIES = ("UNKNOWN", "LOW", "MEDIUM", "HIGH", "CRITICAL")  # trivy-db types.Severity 0..4


def vulnerability(title: str, severity: str, *, source: str = "nvd") -> dict[str, object]:
    """A ``vulnerability`` bucket record with ``severity`` given by one vendor (``nvd``).

    Trivy picks the severity of the scanned OS's own source first, then NVD's, then the
    plain ``Severity`` string; setting both ``VendorSeverity`` and ``Severity`` is safe.
    """
    return {
        "Title": title,
        "Description": f"{title} (test fixture)",
        "Severity": severity,
        "VendorSeverity": {source: SEVERITIES.index(severity)},
    }


def _go_time(moment: datetime) -> str:
    """A time as Go's encoding/json writes a UTC time.Time (RFC 3339, fractional seconds)."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def write_trivy_db(
    cache_dir: Path,
    *,
    os_name: str,
    os_version: str,
    advisories: Mapping[str, Mapping[str, str | None]],
    vulnerabilities: Mapping[str, Mapping[str, object]],
    inline_buckets: bool = True,
) -> Path:
    """Write ``cache_dir/db/trivy.db`` and ``metadata.json``; return the db folder.

    ``os_name``/``os_version`` name the advisory bucket as Trivy looks it up: ``"debian"`` +
    the major version (``"12"``), ``"alpine"`` + major.minor (``"3.19"``). ``advisories`` maps
    a *source* package name to {vulnerability id: fixed version, or None when unfixed}.
    ``vulnerabilities`` maps a vulnerability id to its record (see :func:`vulnerability`).
    An id missing from ``vulnerabilities`` is still reported by Trivy, with severity UNKNOWN.

    Buckets, as trivy-db lays them out and Trivy 0.76 reads them:

    * ``"<os> <version>"`` -> one nested bucket per source package -> vulnerability id ->
      advisory JSON (``{"FixedVersion": ...}``; ``{}`` is unfixed, reported as "affected").
    * ``vulnerability`` -> id -> record JSON. It must exist even when empty: without it
      Trivy 0.76 panics (nil pointer in bbolt ``Bucket.Get``) before printing a report.
    * ``data-source`` -> the OS bucket name -> ``{"ID", "Name", "URL"}``. Optional; when
      present, Trivy copies it into each finding's ``DataSource`` and prefers
      ``VendorSeverity[<its ID>]`` over ``VendorSeverity["nvd"]``.
    """
    bucket_name = f"{os_name} {os_version}"
    os_bucket: dict[bytes, object] = {}
    for package, vulns in advisories.items():
        os_bucket[package.encode()] = {
            vuln_id.encode(): _json({"FixedVersion": fixed} if fixed else {})
            for vuln_id, fixed in vulns.items()
        }
    data_source = KNOWN_DATA_SOURCES.get(
        os_name, {"ID": os_name, "Name": f"{os_name} (test)", "URL": "https://example.invalid/"}
    )
    buckets: dict[bytes, Mapping[bytes, object]] = {
        bucket_name.encode(): os_bucket,
        b"vulnerability": {
            vuln_id.encode(): _json(dict(record)) for vuln_id, record in vulnerabilities.items()
        },
        b"data-source": {bucket_name.encode(): _json(data_source)},
    }

    db_dir = cache_dir / "db"
    db_dir.mkdir(parents=True, exist_ok=True)
    write_bolt(db_dir / "trivy.db", buckets, inline_buckets=inline_buckets)

    # trivy-db's metadata.json: {Version, NextUpdate, UpdatedAt, DownloadedAt}, times as Go
    # writes them. Found by experiment with Trivy 0.76:
    # - with --skip-db-update only Version is checked: no metadata.json at all is "cannot be
    #   specified on the first run", Version 1 is "old DB schema"; {"Version": 2} alone, or a
    #   NextUpdate long past, is accepted without any warning;
    # - without --skip-db-update, Trivy downloads (and fails offline) once NextUpdate has
    #   passed, so a NextUpdate ten years ahead keeps even a plain `trivy` run offline.
    now = datetime.now(UTC)
    metadata = {
        "Version": 2,
        "NextUpdate": _go_time(now + timedelta(days=3650)),
        "UpdatedAt": _go_time(now),
        "DownloadedAt": _go_time(now),
    }
    (db_dir / "metadata.json").write_text(json.dumps(metadata), encoding="utf-8")
    return db_dir


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# --- Root filesystems Trivy recognises ----------------------------------------------------------

DEBIAN_CODENAMES = {"10": "buster", "11": "bullseye", "12": "bookworm", "13": "trixie"}


def write_debian_rootfs(
    root: Path, packages: list[tuple[str, str, str]], *, version: str = "12.5"
) -> Path:
    """Write the files Trivy needs to see a Debian system with ``packages`` installed.

    ``packages`` holds (binary package name, source package name, version). Trivy matches
    Debian advisories on the *source* package and the major version (``debian 12``).
    """
    major = version.partition(".")[0]
    codename = DEBIAN_CODENAMES.get(major, "unknown")
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/debian_version").write_text(version + "\n", encoding="utf-8")
    (root / "etc/os-release").write_text(
        f'PRETTY_NAME="Debian GNU/Linux {major} ({codename})"\n'
        'NAME="Debian GNU/Linux"\n'
        f'VERSION_ID="{major}"\n'
        f'VERSION="{major} ({codename})"\n'
        f"VERSION_CODENAME={codename}\n"
        "ID=debian\n",
        encoding="utf-8",
    )
    stanzas = []
    for name, source, pkg_version in packages:
        lines = [
            f"Package: {name}",
            "Status: install ok installed",
            "Priority: optional",
            "Section: libs",
            "Installed-Size: 100",
            "Maintainer: Test <test@example.invalid>",
            "Architecture: amd64",
        ]
        if source != name:
            lines.append(f"Source: {source}")
        lines += [f"Version: {pkg_version}", f"Description: {name} (test fixture)"]
        stanzas.append("\n".join(lines) + "\n")
    dpkg = root / "var/lib/dpkg"
    dpkg.mkdir(parents=True, exist_ok=True)
    (dpkg / "status").write_text("\n".join(stanzas), encoding="utf-8")
    return root


def write_alpine_rootfs(
    root: Path, packages: list[tuple[str, str, str]], *, version: str = "3.19.1"
) -> Path:
    """Write the files Trivy needs to see an Alpine system with ``packages`` installed.

    ``packages`` holds (package name, origin = source package name, version). Trivy matches
    Alpine advisories on the origin and major.minor (``alpine 3.19``).
    """
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/alpine-release").write_text(version + "\n", encoding="utf-8")
    records = [
        f"P:{name}\nV:{pkg_version}\nA:x86_64\nT:{name} (test fixture)\nL:MIT\no:{source}\n"
        for name, source, pkg_version in packages
    ]
    apk = root / "lib/apk/db"
    apk.mkdir(parents=True, exist_ok=True)
    (apk / "installed").write_text("\n".join(records) + "\n", encoding="utf-8")
    return root
