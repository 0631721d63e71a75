"""Archives are untrusted input (brandtune.ingest.sources): hostile and broken zip files give their good photos and
a report line per bad entry, within bounded time, memory and disk.

The wall time and peak memory of each case are printed (``-s``), never asserted as times."""

from __future__ import annotations

import json
import resource
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest
from ingest_helpers import make_photos, rejections

from brandtune.config import BrandSpec, IngestConfig
from brandtune.errors import IngestError
from brandtune.ingest import ingest, sources
from brandtune.settings import Settings


def _patch_header(data: bytes, name: str, field: str, value: int) -> bytes:
    """The zip ``data`` with one 16-bit field of entry ``name``'s local and central headers set to ``value``:
    ``flags`` (the general-purpose bits) or ``method`` (zipfile can write neither an encrypted entry nor an
    unsupported method)."""
    local_at, central_at = {"flags": (6, 8), "method": (8, 10)}[field]
    out = bytearray(data)
    encoded = name.encode()
    for signature, at, name_len_at, name_at in (
        (b"PK\x03\x04", local_at, 26, 30),
        (b"PK\x01\x02", central_at, 28, 46),
    ):
        start = 0
        while (start := out.find(signature, start)) >= 0:
            (length,) = struct.unpack_from("<H", out, start + name_len_at)
            if bytes(out[start + name_at : start + name_at + length]) == encoded:
                struct.pack_into("<H", out, start + at, value)
            start += 4
    return bytes(out)


def _zeros_entry(zf: zipfile.ZipFile, name: str, size: int) -> None:
    """A deflated entry of ``size`` zero bytes, streamed (about 1000:1, as in a zip bomb)."""
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    with zf.open(info, "w", force_zip64=True) as dst:
        block = bytes(1 << 20)
        for _ in range(size >> 20):
            dst.write(block)


class Measure:
    """Wall time and the process's peak RSS of a block, printed on exit; with ``trace``, also the peak of Python's
    allocations (tracemalloc, which slows the block several-fold)."""

    def __init__(self, what: str, trace: bool = False) -> None:
        self.what, self.trace, self.peak = what, trace, 0

    def __enter__(self) -> Measure:
        if self.trace:
            tracemalloc.start()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
        if self.trace:
            self.peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        traced = f", peak Python allocations {self.peak / 2**20:.1f} MiB" if self.trace else ""
        print(f"{self.what}: {self.seconds:.1f} s{traced}, process peak RSS {rss:.0f} MiB")


# Unpacks an archive in a fresh process and prints its wall time, peak RSS and results as JSON.
UNPACK_CHILD = """
import json, resource, sys, time
from pathlib import Path
from brandtune.ingest.sources import unpack_zip
started = time.perf_counter()
folder, refused = unpack_zip(Path(sys.argv[1]), Path(sys.argv[2]))
print(json.dumps({"seconds": time.perf_counter() - started, "files": sum(1 for _ in folder.iterdir()),
                  "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "refused": refused}))
"""


def test_bad_entries_among_good_photos_are_each_refused_with_their_reason(
    brand: BrandSpec, settings: Settings, tmp_path: Path
) -> None:
    """An encrypted entry, a bad CRC, an unsupported method, a nested zip (by name and under a photo's name), an
    entry over the per-photo limit and a zip bomb: the four good photos are ingested, every bad entry is listed."""
    photos = make_photos(tmp_path / "src", 5)
    archive = tmp_path / "upload.zip"
    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(inner, "w") as nested:
        nested.write(photos[4], "hidden.png")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for p in photos[:4]:
            zf.write(p, p.name)
        zf.writestr("locked.png", photos[4].read_bytes())
        zf.writestr("badcrc.png", photos[4].read_bytes())
        zf.writestr("deflate64.png", photos[4].read_bytes())
        zf.write(inner, "inner.zip")
        zf.write(inner, "sneaky.png")  # a zip under a photo's name
        _zeros_entry(zf, "huge.png", sources.MAX_MEMBER_BYTES + (1 << 20))  # the real 256 MiB limit
        _zeros_entry(zf, "bomb.png", 16 << 20)
    data = archive.read_bytes()
    payload = photos[4].read_bytes()
    at = data.find(payload, data.find(b"badcrc.png"))
    data = data[: at + 100] + bytes([data[at + 100] ^ 0xFF]) + data[at + 101 :]  # one flipped byte
    data = _patch_header(data, "locked.png", "flags", 0x1)  # the encryption bit
    archive.write_bytes(_patch_header(data, "deflate64.png", "method", 9))
    print(f"archive: {archive.stat().st_size / 2**20:.1f} MiB on disk")

    with Measure("bad entries among good photos"):
        result = ingest(brand, archive, IngestConfig.for_brand(brand, min_images=1), settings, progress=False)
    assert result.num_images == 4
    assert rejections(result.path) == {
        "locked.png": "encrypted_archive_entry",
        "badcrc.png": "corrupt_archive_entry",
        "deflate64.png": "unsupported_archive_entry",
        "inner.zip": "nested_archive",
        "sneaky.png": "nested_archive",
        "huge.png": "archive_entry_too_large",
        "bomb.png": "suspicious_compression_ratio",
    }
    report = json.loads(result.report_path.read_text())
    assert all(r["detail"] and r["source"].startswith(f"{archive}!") for r in report["rejected"])
    assert not list(settings.datasets_dir.rglob("hidden.png"))  # never recursed into


def test_the_bytes_unpacked_from_one_archive_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = make_photos(tmp_path / "src", 6)
    sizes = [p.stat().st_size for p in photos]
    monkeypatch.setattr(sources, "MAX_ARCHIVE_BYTES", sum(sizes[:4]))
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in photos:
            zf.write(p, p.name)
    folder, refused = sources.unpack_zip(archive, tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == [p.name for p in photos[:4]]
    assert [(Path(r["source"]).name.split("!")[-1], r["reason"]) for r in refused] == [
        (photos[4].name, "archive_total_too_large"),
        (photos[5].name, "archive_total_too_large"),
    ]


def test_100000_tiny_entries_are_read_in_bounded_time_memory_and_disk(
    brand: BrandSpec, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first MAX_ARCHIVE_MEMBERS entries are examined (good photos ingested, each bad one listed); the other
    90,000 are one report line with their count. Unpacked in a fresh process to measure its peak RSS."""
    photos = make_photos(tmp_path / "src", 4)
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for p in photos:
            zf.write(p, p.name)
        for i in range(100_000 - len(photos)):
            zf.writestr(f"f{i:06d}.png", b"x")
    child = subprocess.run(
        [sys.executable, "-c", UNPACK_CHILD, str(archive), str(tmp_path / "out")],
        capture_output=True, text=True, check=True, timeout=300,
    )  # fmt: skip
    got = json.loads(child.stdout.splitlines()[-1])
    print(f"100,000 entries unpacked: {got['seconds']:.1f} s, peak RSS {got['peak_rss'] / 2**20:.0f} MiB")
    assert got["files"] == sources.MAX_ARCHIVE_MEMBERS  # disk: 10,000 files written, not 100,000
    assert [r["reason"] for r in got["refused"]] == ["too_many_archive_entries"]
    assert "100,000 files" in got["refused"][0]["detail"]
    assert got["refused"][0]["source"].endswith("!90000 entries")
    # memory: the interpreter with numpy and PIL (~95 MiB), the directory's entry objects (~60 MiB), one buffer
    assert got["peak_rss"] < 384 * 2**20

    # The whole ingest, with a smaller member bound so that the test takes seconds: every examined entry that is
    # not a photo is listed on its own, the rest in one line.
    monkeypatch.setattr(sources, "MAX_ARCHIVE_MEMBERS", 500)
    cfg = IngestConfig.for_brand(brand, min_images=1, workers=1)
    with Measure("100,000 entries, ingested (first 500 examined)"):
        result = ingest(brand, archive, cfg, settings, progress=False)
    assert result.num_images == len(photos)
    rejected = json.loads(result.report_path.read_text())["rejected"]
    assert [r["reason"] for r in rejected].count("not_an_image") == 500 - len(photos)
    assert [r["detail"] for r in rejected if r["reason"] == "too_many_archive_entries"] == [
        "the archive holds 100,000 files; only the first 500 are read: split it"
    ]


def test_an_archive_whose_directory_is_too_large_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory: zipfile keeps an object per directory entry, so a directory over the bound is refused from the
    end record alone. Reading the same directory the unbounded way allocates many times more."""
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for i in range(20_000):
            zf.writestr(f"f{i:06d}.png", b"x")
    monkeypatch.setattr(sources, "MAX_CENTRAL_DIRECTORY_BYTES", 512 << 10)
    with Measure("20,000-entry directory, read by zipfile", trace=True) as unbounded:
        zipfile.ZipFile(archive).close()
    with Measure("20,000-entry directory, refused", trace=True) as bounded, pytest.raises(IngestError) as err:
        sources.unpack_zip(archive, tmp_path / "out")
    message = str(err.value)
    assert "20,000 entries" in message and "over the 0.5 MiB limit" in message and "\n" not in message
    assert not (tmp_path / "out").exists()
    assert bounded.peak < 512 << 10 < 4 * (512 << 10) < unbounded.peak


def test_a_file_that_is_not_a_zip_is_one_line_error(tmp_path: Path) -> None:
    bogus = tmp_path / "photos.zip"
    bogus.write_bytes(zlib.compress(b"not a zip" * 100))
    with pytest.raises(IngestError, match=r"photos\.zip: not a readable zip archive .*pass a folder"):
        sources.unpack_zip(bogus, tmp_path / "out")
