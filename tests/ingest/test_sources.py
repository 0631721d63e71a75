"""brandtune.ingest.sources: captions from sidecars and captions.jsonl, and zip archives that cannot write outside
their folder."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

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


def test_a_caption_file_too_large_to_be_a_caption_is_reported_and_not_read(
    brand: BrandSpec, settings: Settings, tmp_path: Path
) -> None:
    from brandtune.ingest.sources import MAX_CAPTION_BYTES

    folder = tmp_path / "photos"
    paths = make_photos(folder, 4)
    paths[0].with_suffix(".txt").write_bytes(b"acme " * (MAX_CAPTION_BYTES // 5 + 1))
    paths[1].with_suffix(".txt").write_text("acme on a table")
    result = ingest(brand, folder, IngestConfig.for_brand(brand), settings, progress=False)
    assert result.num_images == 4
    rows = {
        Path(r["source"]).name: r for r in json.loads((result.path / "manifest.json").read_text())["images"]
    }
    assert rows[paths[0].name]["caption_source"] == "template"
    assert rows[paths[1].name]["caption"] == "acme on a table"
    assert rejections(result.path) == {paths[0].with_suffix(".txt").name: "caption_too_large"}
