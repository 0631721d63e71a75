"""Generation under real faults: a ``brandtune generate`` process SIGKILLed at the fault points of
brandtune.generation_manifest (``generation.mid_png``, ``generation.after_png``), then resumed; a truncated PNG; and
the checks that keep one output folder to one set of settings."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from brandtune.config import GenerateConfig, SamplerConfig
from brandtune.errors import GenerationError
from brandtune.faults import FAULT_ENV
from brandtune.fsutil import sha256_file
from brandtune.generation import generate, reproduce

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 2


def _job(out: Path, **overrides: object) -> GenerateConfig:
    base = {
        "brand": "acme",
        "prompt": "a photo of {trigger} {subject}",
        "settings": ["beach"],
        "variations": 4,
        "model": "base",
        "sampler": SamplerConfig(num_inference_steps=STEPS),
        "batch_size": 2,
        "output_dir": out,
    }
    return GenerateConfig(**{**base, **overrides})


def _killed_generate(tmp_path: Path, out: Path, fault: str) -> subprocess.CompletedProcess[str]:
    """``brandtune generate`` of :func:`_job` in a process of its own, which the fault point SIGKILLs."""
    config = tmp_path / "job.json"  # JSON is YAML
    config.write_text(json.dumps(_job(out).model_dump(mode="json")))
    env = {**os.environ, FAULT_ENV: fault, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "brandtune.cli", "generate", "--config", str(config)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)


def _entries(out: Path) -> dict[str, str]:
    path = out / "manifest.json"
    images = json.loads(path.read_text())["images"] if path.is_file() else []
    return {e["file"]: e["sha256"] for e in images}


def test_killed_between_png_and_manifest_and_mid_png_then_resumed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    first = out / "beach" / "000_seed0.png"
    # 1. SIGKILL after the first PNG is renamed into place, before its manifest entry is written
    done = _killed_generate(tmp_path, out, "generation.after_png")
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert first.is_file() and _entries(out) == {}
    written = first.read_bytes()
    # 2. resumed and SIGKILLed again halfway through writing that image anew (it has no entry, so it is remade)
    done = _killed_generate(tmp_path, out, "generation.mid_png")
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert [p.name.startswith(".000_seed0.png.") for p in first.parent.glob("*.tmp")] == [True]
    assert first.read_bytes() == written  # the half write went to the temporary file only
    # 3. resumed without a fault: every image is made and recorded with the sha256 of its file
    caplog.set_level(logging.INFO, logger="brandtune")
    result = generate(_job(out), progress=False)
    assert (result.generated, result.skipped) == (4, 0)
    assert f"{first} has no manifest entry" in caplog.text
    entries = _entries(out)
    assert len(entries) == 4
    assert all(sha256_file(out / file) == sha for file, sha in entries.items())
    assert list(first.parent.glob("*.tmp")) == []
    assert first.read_bytes() == written  # the image the killed process had fully written comes back the same
    # 4. a truncated PNG is made again (and logged); the three good ones are kept
    victim = out / "beach" / "002_seed2.png"
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])
    caplog.clear()
    again = generate(_job(out), progress=False)
    assert (again.generated, again.skipped) == (1, 3)
    assert f"{victim} differs from the sha256 in its manifest entry" in caplog.text
    assert victim.read_bytes() == good and _entries(out) == entries


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_another_sampler_or_prompt_in_the_same_output_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    generate(_job(out, variations=1), progress=False)
    before = _snapshot(out)
    for overrides, message in [
        (
            {"sampler": SamplerConfig(num_inference_steps=STEPS + 1)},
            "sampler num_inference_steps 2, but this job has 3",
        ),
        (
            {"sampler": SamplerConfig(num_inference_steps=STEPS, guidance_scale=7.0)},
            "sampler guidance_scale 4.0, but",
        ),
        (
            {"sampler": SamplerConfig(num_inference_steps=STEPS, scheduler="default")},
            "sampler scheduler 'ddim', but",
        ),
        ({"prompt": "a bottle of {trigger} on a rock"}, r"000_seed0\.png was made with prompt"),
    ]:
        with pytest.raises(GenerationError, match=message) as err:
            generate(_job(out, variations=1, **overrides), progress=False)
        assert len(str(err.value).splitlines()) == 1 and "use a new --output, or --overwrite" in str(
            err.value
        )
        assert _snapshot(out) == before
    # more variations with the same settings extend the campaign; --overwrite remakes it with new ones
    assert generate(_job(out, variations=2), progress=False).generated == 1
    changed = _job(out, variations=2, sampler=SamplerConfig(num_inference_steps=STEPS + 1))
    assert generate(changed, progress=False, overwrite=True).generated == 2
    assert {e["steps"] for e in json.loads((out / "manifest.json").read_text())["images"]} == {STEPS + 1}


def test_reproduce_refuses_another_base_revision(tmp_path: Path) -> None:
    result = generate(_job(tmp_path / "out", variations=1), progress=False)
    data = json.loads(result.manifest.read_text())
    recorded = data["model"]["base_revision"]
    data["model"]["base_revision"] = "f" * 12
    result.manifest.write_text(json.dumps(data))
    with pytest.raises(GenerationError, match="base revision") as err:
        reproduce(result.manifest, tmp_path / "again")
    assert len(str(err.value).splitlines()) == 1
    assert f"'{recorded}' here" in str(err.value) and f"recorded '{'f' * 12}'" in str(err.value)
    assert not (tmp_path / "again").exists()


def test_doctor_finds_damaged_campaigns_and_removes_stale_temporaries(tmp_path: Path) -> None:
    from brandtune.doctor import CHECKS
    from brandtune.generation_manifest import check
    from brandtune.settings import Settings

    assert "brandtune.generation_manifest:check" in CHECKS
    settings = Settings(home=tmp_path / "home", tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = settings.home / "campaigns" / "acme" / "job"
    generate(_job(out, variations=1), progress=False)
    assert check(settings, brand="acme") == []
    image = out / "beach" / "000_seed0.png"
    image.write_bytes(image.read_bytes()[:100])
    stale = out / "beach" / ".000_seed0.png.abc123.tmp"
    stale.write_bytes(b"half")
    found = check(settings, brand="acme")
    assert sorted(f.problem.split(" ", 1)[1] for f in found) == [
        "image(s) do not match their manifest sha256 (beach/000_seed0.png, ...)",
        "temporary file(s) left by a killed generate job",
    ]
    assert stale.exists() and not any(f.fixed for f in found)
    fixed = check(settings, brand="acme", fix=True)
    assert not stale.exists() and [f.fixed for f in fixed if "temporary" in f.problem] == [True]
    assert check(settings, brand="other") == []
    (out / "manifest.json").write_text('{"images": 3}')
    [broken] = [f for f in check(settings, brand="acme") if "manifest.json" in f.subject]
    assert "manifest.json: job: Field required" in broken.problem


def test_a_full_disk_mid_png_is_one_line_and_the_job_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from brandtune.faults import ACTION_ENV

    out = tmp_path / "out"
    generate(_job(out, variations=2), progress=False)
    recorded = _entries(out)
    monkeypatch.setenv(FAULT_ENV, "generation.mid_png")
    monkeypatch.setenv(ACTION_ENV, "enospc")
    with pytest.raises(
        GenerationError, match=r"002_seed2\.png: cannot be written \(No space left on device"
    ) as err:
        generate(_job(out, variations=4), progress=False)
    assert len(str(err.value).splitlines()) == 1 and "run the same command again" in str(err.value)
    assert list((out / "beach").glob(".*.tmp")) == [] and not (out / "beach" / "002_seed2.png").exists()
    assert _entries(out) == recorded  # the manifest still lists exactly the images that are on disk
    monkeypatch.delenv(FAULT_ENV)
    assert generate(_job(out, variations=4), progress=False).generated == 2
    assert (
        all(sha256_file(out / file) == sha for file, sha in _entries(out).items()) and len(_entries(out)) == 4
    )
