"""Campaign generation (brandtune.generation) on adapters trained and registered in this module (the
``versions`` fixture, tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from generation_helpers import FAST
from PIL import Image

from brandtune.config import GenerateConfig
from brandtune.errors import GenerationError, RegistryError
from brandtune.fsutil import sha256_file
from brandtune.generation import generate, reproduce

pytestmark = pytest.mark.usefixtures("torch_threads", "acme_dataset")


def _job(tmp_path: Path, **overrides: object) -> GenerateConfig:
    base = {
        "brand": "acme",
        "prompt": "a photo of {trigger} {subject}",
        "settings": ["beach", "in a snowy cabin"],
        "variations": 3,
        "model": "candidate",
        "sampler": FAST,
        "batch_size": 2,
        "output_dir": tmp_path / "out",
    }
    return GenerateConfig(**{**base, **overrides})


def test_generation_job_writes_images_manifest_gallery_and_resumes(
    versions: list[str], tmp_path: Path
) -> None:
    result = generate(_job(tmp_path), progress=False)
    assert (result.generated, result.skipped) == (6, 0)
    assert result.model_version == versions[-1]
    manifest = json.loads(result.manifest.read_text())
    assert len(manifest["images"]) == 6
    for entry in manifest["images"]:
        for key in (
            "prompt",
            "negative_prompt",
            "seed",
            "steps",
            "guidance",
            "size",
            "version",
            "base_model",
        ):
            assert key in entry, key
        assert entry["prompt"].startswith("a photo of acme bottle")
        assert (result.output_dir / entry["file"]).is_file()
    assert {e["prompt"] for e in manifest["images"]} == {
        "a photo of acme bottle on a beach",
        "a photo of acme bottle in a snowy cabin",
    }
    assert sorted(p.name for p in result.contact_sheets) == [
        "contact_beach.png",
        "contact_in-a-snowy-cabin.png",
    ]
    html = result.gallery.read_text()
    assert html.count("<figure>") == 6 and "manifest.json" in html
    # Re-running skips what exists; a deleted image is the only one made again.
    again = generate(_job(tmp_path), progress=False)
    assert (again.generated, again.skipped) == (0, 6)
    victim = result.output_dir / manifest["images"][4]["file"]
    before = np.asarray(Image.open(victim))
    victim.unlink()
    third = generate(_job(tmp_path), progress=False)
    assert (third.generated, third.skipped) == (1, 5)
    # --reproduce makes every image again bit for bit.
    copies = reproduce(result.manifest, tmp_path / "again")
    assert len(copies) == 6
    for entry in json.loads(result.manifest.read_text())["images"]:
        a = np.asarray(Image.open(result.output_dir / entry["file"]))
        b = np.asarray(Image.open(tmp_path / "again" / entry["file"]))
        assert np.array_equal(a, b), entry["file"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again" / manifest["images"][4]["file"])), before)


def test_img2img_variations_of_a_photo(versions: list[str], tmp_path: Path) -> None:
    photo = sorted((Path(__file__).resolve().parent.parent / "data/brands/acme/photos").glob("*.png"))[0]
    result = generate(
        _job(tmp_path, settings=[], variations=2, init_image=photo, strength=0.5), progress=False
    )
    assert result.generated == 2


def test_generation_bad_input(versions: list[str], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="prompt is empty"):
        _job(tmp_path, prompt="   ")
    with pytest.raises(GenerationError, match="over max_images"):
        generate(_job(tmp_path, variations=30, max_images=50), progress=False)
    with pytest.raises(GenerationError, match=r"unknown setting 'beech'.*beach"):
        generate(_job(tmp_path, settings=["beech"]), progress=False)
    with pytest.raises(RegistryError, match="candidate"):
        generate(_job(tmp_path, model="nonexistent"), progress=False)
    with pytest.raises(GenerationError, match=r"no usable @champion.*brandtune promote acme"):
        generate(_job(tmp_path, model="champion"), progress=False)
    caplog.set_level("WARNING")
    result = generate(_job(tmp_path, prompt="a bottle on a table", settings=[], variations=1), progress=False)
    assert "no trigger token" in caplog.text
    entry = json.loads(result.manifest.read_text())["images"][0]
    assert entry["prompt"] == "acme, a bottle on a table"


def _manifest(tmp_path: Path, **image: object) -> Path:
    """A hand-written manifest.json with one image (``image`` overrides its fields)."""
    entry = {
        "file": "beach/000_seed0.png",
        "prompt": "a photo of acme bottle on a beach",
        "seed": 0,
        "batch": {"prompts": ["a photo of acme bottle on a beach"], "seeds": [0], "index": 0},
        **image,
    }
    entry = {k: v for k, v in entry.items() if v is not ...}  # ``...`` drops a key
    data = {
        "job": {"brand": "acme", "prompt": "a photo of {trigger} {subject}", "model": "base"},
        "sampler": {"num_inference_steps": 2, "width": 64, "height": 64},
        "model": {"version": ""},
        "images": [entry],
    }
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data))
    return path


def _snapshot(*folders: Path) -> dict[str, bytes]:
    """Every file under ``folders`` (and whether each folder exists), to show that nothing was written."""
    out: dict[str, bytes] = {}
    for folder in folders:
        out[f"{folder} exists"] = str(folder.exists()).encode()
        for path in sorted(folder.rglob("*")) if folder.exists() else []:
            out[str(path)] = path.read_bytes() if path.is_file() else b"<dir>"
    return out


_BATCH = {"prompts": ["p"], "seeds": [0], "index": 0}


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ({"file": "../escaped.png"}, r"images\[0\]\.file: '\.\./escaped\.png' is not a \.png path inside"),
        ({"file": "beach/../../escaped.png"}, r"images\[0\]\.file: .* is not a \.png path inside"),
        ({"file": "/tmp/escaped.png"}, r"images\[0\]\.file: '/tmp/escaped\.png' is not a \.png path inside"),
        ({"file": "beach\\..\\..\\escaped.png"}, r"images\[0\]\.file: .* is not a \.png path inside"),
        ({"file": "beach/notes.txt"}, r"images\[0\]\.file: .* is not a \.png path inside"),
        ({"file": ""}, r"images\[0\]\.file: .* is not a \.png path inside"),
        ({"file": 3}, r"images\[0\]\.file: Input should be a valid string"),
        ({"batch": None}, r"images\[0\]\.batch: Input should be a valid dictionary"),
        (
            {"batch": {"prompts": ["p"], "seeds": [0], "index": 3}},
            r"images\[0\]\.batch: .* do not fit together",
        ),
        ({"seed": 7}, r"images\[0\]\.seed: 7 differs from its batch record"),
        ({"seed": "zero"}, r"images\[0\]\.seed: Input should be a valid integer"),
        (
            {"batch": {**_BATCH, "seeds": ["zero"]}},
            r"images\[0\]\.batch\.seeds\[0\]: Input should be a valid int",
        ),
        ({"batch": {"prompts": ["p"], "index": 0}}, r"images\[0\]\.batch\.seeds: Field required"),
        ({"file": ...}, r"images\[0\]\.file: Field required"),
        ({"sha256": "abc"}, r"images\[0\]\.sha256: String should match pattern"),
        ({"colour": "red"}, r"images\[0\]\.colour: unknown key"),
    ],
    ids=[
        "parent-dir",
        "nested-parent",
        "absolute",
        "backslashes",
        "not-png",
        "empty",
        "file-type",
        "batch-type",
        "index",
        "seed-mismatch",
        "seed-type",
        "batch-seed-type",
        "missing-key",
        "missing-file",
        "bad-sha",
        "unknown-key",
    ],
)
def test_reproduce_refuses_a_tampered_manifest(tmp_path: Path, image: dict, message: str) -> None:
    out, sentinel = tmp_path / "out", tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "keep.txt").write_text("untouched")
    path = _manifest(tmp_path, **image)
    before = _snapshot(out, sentinel)
    with pytest.raises(GenerationError, match=message) as err:
        reproduce(path, out)
    assert len(str(err.value).splitlines()) == 1, err.value
    assert "manifest.json" in str(err.value) and "; use the manifest.json brandtune wrote" in str(err.value)
    assert _snapshot(out, sentinel) == before
    assert (
        not out.exists() and not (tmp_path / "escaped.png").exists() and not Path("/tmp/escaped.png").exists()
    )


def test_reproduce_refuses_a_symlink_that_leads_out_and_a_duplicate(tmp_path: Path) -> None:
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    (out / "beach").symlink_to(outside)
    before = _snapshot(out, outside)
    with pytest.raises(
        GenerationError, match=r"images\[0\]\.file: 'beach/000_seed0\.png' is not a \.png path"
    ):
        reproduce(_manifest(tmp_path), out)
    assert _snapshot(out, outside) == before
    path = _manifest(tmp_path)
    data = json.loads(path.read_text())
    data["images"].append(data["images"][0])
    path.write_text(json.dumps(data))
    with pytest.raises(GenerationError, match=r"images\[1\]\.file: 'beach/000_seed0\.png' is listed twice"):
        reproduce(path, tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()


def test_a_bad_manifest_in_output_stops_a_resume_before_any_write(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    path = _manifest(tmp_path, file="../../escaped.png")
    (out / "manifest.json").write_text(path.read_text())
    before = _snapshot(out)
    job = _job(tmp_path, model="base", settings=["beach"], variations=1)
    with pytest.raises(GenerationError, match=r"out/manifest\.json: images\[0\]\.file: .*--overwrite") as err:
        generate(job, progress=False)
    assert len(str(err.value).splitlines()) == 1
    assert _snapshot(out) == before and not (tmp_path / "escaped.png").exists()


def test_reproduce_refuses_a_bad_brand_or_version_or_file(tmp_path: Path) -> None:
    path = _manifest(tmp_path)
    data = json.loads(path.read_text())
    data["job"]["brand"] = "../../etc"
    path.write_text(json.dumps(data))
    with pytest.raises(GenerationError, match="not a brand slug"):
        reproduce(path, tmp_path / "out")
    data["job"]["brand"], data["model"]["version"] = "acme", "../3"
    path.write_text(json.dumps(data))
    with pytest.raises(GenerationError, match=r"model\.version"):
        reproduce(path, tmp_path / "out")
    path.write_text("{not json")
    with pytest.raises(GenerationError, match="not a readable JSON manifest"):
        reproduce(path, tmp_path / "out")
    with pytest.raises(GenerationError, match="'nike' does not match brand 'acme'"):
        reproduce(_manifest(tmp_path), tmp_path / "out", brand="nike")


def test_campaign_in_several_aspects_records_each_size(tmp_path: Path) -> None:
    job = _job(tmp_path, model="base", settings=["beach"], variations=2, aspects=["1:1", "2:3"], batch_size=4)
    result = generate(job, progress=False)
    manifest = json.loads(result.manifest.read_text())
    images = manifest["images"]
    assert [e["file"] for e in images] == [
        "beach/000_seed0_1x1.png",
        "beach/001_seed1_1x1.png",
        "beach/000_seed0_2x3.png",
        "beach/001_seed1_2x3.png",
    ]
    for entry in images:
        with Image.open(result.output_dir / entry["file"]) as img:
            assert img.size == (entry["width"], entry["height"]) == tuple(entry["size"])
        # one pipeline call per aspect: a batch never mixes sizes
        assert len(entry["batch"]["seeds"]) == 2
    assert {(e["aspect"], e["width"], e["height"]) for e in images} == {("1:1", 64, 64), ("2:3", 48, 80)}
    # --reproduce remakes a 2:3 image at its recorded size, bit for bit
    [copy] = reproduce(result.manifest, tmp_path / "again", only=["beach/001_seed1_2x3.png"])
    assert np.array_equal(
        np.asarray(Image.open(copy)), np.asarray(Image.open(result.output_dir / images[3]["file"]))
    )
    # an explicit sampler size wins over the aspects: one image per variation, as before aspects existed
    fixed = FAST.model_copy(update={"width": 32, "height": 32})
    single = generate(
        _job(
            tmp_path,
            model="base",
            settings=["beach"],
            variations=1,
            aspects=["2:3"],
            sampler=fixed,
            output_dir=tmp_path / "fixed",
        ),
        progress=False,
    )
    [entry] = json.loads(single.manifest.read_text())["images"]
    assert entry["file"] == "beach/000_seed0.png" and entry["size"] == [32, 32]


def test_size_multiple_matches_the_trainers(tmp_path: Path) -> None:
    from brandtune.models import load_base_pipeline, resolve_base
    from brandtune.sampling import aspect_samplers, size_multiple
    from brandtune.training.families import family_ops

    resolved = resolve_base("builtin:tiny")
    pipe = load_base_pipeline(resolved)
    assert size_multiple(pipe) == family_ops(resolved.family).resolution_multiple(resolved.path) == 16
    sizes = [(a, s.width, s.height) for a, s in aspect_samplers(pipe, FAST, ["1:1", "2:3", "16:9"])]
    assert sizes == [("1:1", 64, 64), ("2:3", 48, 80), ("16:9", 80, 48)]


def test_another_version_in_the_same_output_and_another_adapter_to_reproduce_are_refused(
    versions: list[str], tmp_path: Path
) -> None:
    result = generate(_job(tmp_path, settings=["beach"], variations=1), progress=False)
    manifest = json.loads(result.manifest.read_text())
    assert manifest["model"]["version"] == versions[-1]
    [entry] = manifest["images"]
    assert entry["sha256"] == sha256_file(result.output_dir / entry["file"])
    assert manifest["model"]["adapter_sha256"] == entry["adapter_sha256"]
    # the same folder with the older version: refused in one line, naming both versions; nothing is written
    before = {p: p.read_bytes() for p in result.output_dir.rglob("*") if p.is_file()}
    with pytest.raises(
        GenerationError, match=rf"adapter version '{versions[-1]}', but this job has '{versions[0]}'"
    ):
        generate(_job(tmp_path, settings=["beach"], variations=1, model=versions[0]), progress=False)
    assert {p: p.read_bytes() for p in result.output_dir.rglob("*") if p.is_file()} == before
    # --reproduce against a registry whose version has other weights: refused, naming the version and both hashes
    recorded = manifest["model"]["adapter_sha256"]
    manifest["model"]["adapter_sha256"] = "0" * 64
    result.manifest.write_text(json.dumps(manifest))
    with pytest.raises(GenerationError) as err:
        reproduce(result.manifest, tmp_path / "again")
    text = str(err.value)
    assert (
        len(text.splitlines()) == 1 and f"version {versions[-1]} has adapter sha256 '{recorded}' here" in text
    )
    assert f"recorded '{'0' * 64}'" in text and not (tmp_path / "again").exists()
