"""brandtune.ingest.sources: captions from sidecars and captions.jsonl, and zip archives that cannot write outside
their folder."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from ingest_helpers import FIXTURES, make_photos, rejections

from brandtune.config import BrandSpec, IngestConfig
from brandtune.ingest import ingest
from brandtune.settings import Settings


def test_captions_sidecar_jsonl_template_and_trigger(
    brand: BrandSpec, settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    paths = make_photos(folder, 4)
    paths[0].with_suffix(".txt").write_text("a photo of acme bottle on a beach\n")
    paths[1].with_suffix(".txt").write_text("a teal bottle in the snow")  # no trigger: added
    (folder / "captions.jsonl").write_text(
        json.dumps({"file_name": paths[2].name, "text": "acme on a table"}) + "\n"
    )
    result = ingest(brand, folder, IngestConfig.for_brand(brand), settings, progress=False)
    rows = {
        Path(r["source"]).name: r for r in json.loads((result.path / "manifest.json").read_text())["images"]
    }
    assert rows[paths[0].name]["caption"] == "a photo of acme bottle on a beach"
    assert rows[paths[1].name]["caption"] == "acme, a teal bottle in the snow"
    assert rows[paths[1].name]["trigger_added"] is True
    assert rows[paths[2].name]["caption"] == "acme on a table"
    assert rows[paths[2].name]["caption_source"] == "captions.jsonl"
    assert rows[paths[3].name]["caption"] == "a photo of acme bottle"
    for line in result.metadata_path.read_text().splitlines():
        assert "acme" in json.loads(line)["text"].split(", ")[0]


def test_zip_slip_writes_nothing_outside(brand: BrandSpec, settings: Settings, tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "src", 4)
    archive = tmp_path / "deep" / "upload.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for p in photos:
            zf.write(p, f"photos/{p.name}")
        zf.writestr("../escaped.png", photos[0].read_bytes())
        zf.writestr("/tmp/absolute_escape.png", photos[1].read_bytes())
        link = zipfile.ZipInfo("photos/link.png")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
    before = set(tmp_path.rglob("*"))
    result = ingest(brand, archive, IngestConfig.for_brand(brand), settings, progress=False)
    assert result.num_images == 4
    got = rejections(result.path)
    assert got["escaped.png"] == got["absolute_escape.png"] == got["link.png"] == "unsafe_archive_entry"
    created = {
        p for p in set(tmp_path.rglob("*")) - before if p != settings.home and settings.home not in p.parents
    }
    assert created == set()
    assert not Path("/tmp/absolute_escape.png").exists()
    # The committed fixture zip too.
    ingest(
        brand, FIXTURES / "zipslip.zip", IngestConfig.for_brand(brand, min_images=1), settings, progress=False
    )
    assert not (FIXTURES.parent / "evil.png").exists()


def _patch_header(data: bytes, name: str, field: str, value: int) -> bytes:
    """The zip ``data`` with one 16-bit field of entry ``name``'s local and central headers set to ``value``:
    ``flags`` (the general-purpose bits) or ``method`` (zipfile can write neither an encrypted entry nor an
    unsupported method)."""
    import struct

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


def test_bad_archive_entries_are_refused_one_by_one(
    brand: BrandSpec, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An encrypted entry, a bad CRC, an unsupported compression method, an oversized entry and a nested zip are
    each refused with their reason in report.json; the good photos are ingested."""
    from brandtune.ingest import sources

    photos = make_photos(tmp_path / "src", 5)
    monkeypatch.setattr(sources, "MAX_MEMBER_BYTES", 1 << 20)
    archive = tmp_path / "upload.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for p in photos[:4]:
            zf.write(p, p.name)
        zf.writestr("locked.png", photos[4].read_bytes())
        zf.writestr("badcrc.png", photos[4].read_bytes())
        zf.writestr("deflate64.png", photos[4].read_bytes())
        zf.writestr("huge.png", bytes(2 << 20))
        inner = tmp_path / "inner.zip"
        with zipfile.ZipFile(inner, "w") as nested:
            nested.write(photos[4], "hidden.png")
        zf.write(inner, "inner.zip")
    data = archive.read_bytes()
    payload = photos[4].read_bytes()
    at = data.find(payload, data.find(b"badcrc.png"))
    data = data[: at + 100] + bytes([data[at + 100] ^ 0xFF]) + data[at + 101 :]  # one flipped byte
    data = _patch_header(data, "locked.png", "flags", 0x1)  # the encryption bit
    archive.write_bytes(_patch_header(data, "deflate64.png", "method", 9))
    result = ingest(brand, archive, IngestConfig.for_brand(brand, min_images=1), settings, progress=False)
    assert result.num_images == 4
    got = rejections(result.path)
    assert got["locked.png"] == "encrypted_archive_entry"
    assert got["badcrc.png"] == "corrupt_archive_entry"
    assert got["deflate64.png"] == "unsupported_archive_entry"
    assert got["huge.png"] == "archive_entry_too_large"
    assert got["inner.zip"] == "not_an_image"  # a nested archive is not unpacked


def test_an_archive_of_100000_tiny_entries_is_read_in_bounded_time_and_memory(tmp_path: Path) -> None:
    import time
    import tracemalloc

    from brandtune.ingest.sources import MAX_ARCHIVE_MEMBERS, unpack_zip

    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for i in range(100_000):
            zf.writestr(f"f{i:06d}.png", b"x")
    started = time.perf_counter()
    tracemalloc.start()
    folder, refused = unpack_zip(archive, tmp_path / "out")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    elapsed = time.perf_counter() - started
    print(f"100,000 entries: {elapsed:.1f} s, peak Python memory {peak / 2**20:.1f} MiB")
    assert sum(1 for _ in folder.iterdir()) == MAX_ARCHIVE_MEMBERS
    assert [r["reason"] for r in refused] == ["too_many_archive_entries"]
    assert "100,000 files" in refused[0]["detail"]
    assert peak < 256 * 2**20  # bounded: the member list and one copy buffer, not the files
