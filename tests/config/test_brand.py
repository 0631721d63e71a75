from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from brandtune.config import BrandSpec, IngestConfig, load_brand, load_yaml_model
from brandtune.config.aspects import aspect_size, parse_aspect
from brandtune.errors import ConfigError
from brandtune.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def _spec(**overrides: object) -> dict:
    data = {
        "name": "acme",
        "trigger": "acme",
        "subject": "bottle",
        "palette": ["#1fa6a0"],
        "evaluation_prompts": ["a photo of {trigger} {subject}"],
    }
    data.update(overrides)
    return data


def test_sample_brand_loads() -> None:
    spec = load_brand(REPO / "data/brands/acme")
    assert spec.name == "acme"
    assert spec.instance_phrase == "acme bottle"
    assert spec.fill(spec.evaluation_prompts[0]).startswith("a photo of acme bottle")


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"name": "Acme Corp"}, "not a slug"),
        ({"palette": ["teal"]}, "palette"),
        ({"palette": []}, "palette"),
        ({"trigger": "two words"}, "one word"),
        ({"evaluation_prompts": ["a {product}"]}, "unknown placeholders"),
        ({"colour": "#ffffff"}, "unknown key"),
        ({"neutral_palette": ["#1fa6a0"]}, "both palette and neutral_palette"),
        ({"gate": {"max_palete_delta_e": 15}}, "gate.max_palete_delta_e: unknown key"),
        ({"gate": {"max_palette_delta_e": -3}}, "gate.max_palette_delta_e"),
        ({"gate": [{"metric": "palette_delta_e"}]}, "gate: Input should be"),
    ],
)
def test_brand_spec_rejects_bad_values(tmp_path: Path, overrides: dict, needle: str) -> None:
    import yaml

    folder = tmp_path / "acme"
    folder.mkdir()
    (folder / "brand.yaml").write_text(yaml.safe_dump(_spec(**overrides)))
    with pytest.raises(ConfigError) as err:
        load_brand(folder)
    assert needle in str(err.value)
    assert "brand.yaml" in str(err.value)


def test_unknown_brand_lists_known_ones(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "brand.yaml").write_text("name: other\n")
    with pytest.raises(ConfigError, match=r"known brands in .*: other"):
        load_brand("nope", brands_dir=tmp_path)


def test_unknown_brand_names_the_absolute_folder_and_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run from another folder, the error says where it looked (absolute) and how to point elsewhere."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BRANDTUNE_BRANDS_DIR", raising=False)
    with pytest.raises(ConfigError) as err:
        load_brand("acme")
    message = str(err.value)
    assert f"no brands found in {tmp_path / 'data' / 'brands'}" in message
    assert str(tmp_path / "data" / "brands" / "acme" / "brand.yaml") in message
    assert "set BRANDTUNE_BRANDS_DIR" in message and "unset" in message
    assert "\n" not in message
    # the variable is honoured, and the message then says what it is
    monkeypatch.setenv("BRANDTUNE_BRANDS_DIR", str(REPO / "data" / "brands"))
    assert load_brand("acme").name == "acme"
    monkeypatch.setenv("BRANDTUNE_BRANDS_DIR", "elsewhere")
    with pytest.raises(ConfigError, match=r"no brands found in /.*elsewhere.*it is 'elsewhere'"):
        load_brand("acme")
    # a path that is not there is named as such, absolute
    with pytest.raises(ConfigError, match=rf"{tmp_path}/sub/nowhere/brand.yaml does not exist"):
        load_brand("sub/nowhere")


def test_brand_gate_opt_in_loads_from_brand_yaml(tmp_path: Path) -> None:
    import yaml

    from brandtune.config import BrandGate

    folder = tmp_path / "acme"
    folder.mkdir()
    gate = {"max_palette_delta_e": 15, "min_technical_ok": 0.9, "min_palette_improvement": 1}
    (folder / "brand.yaml").write_text(yaml.safe_dump(_spec(gate=gate)))
    spec = load_brand(folder)
    assert spec.gate.max_palette_delta_e == 15.0 and spec.gate.min_palette_improvement == 1.0
    assert spec.gate.thresholds() == {"palette_delta_e": ("max", 15.0), "technical_ok": ("min", 0.9)}
    assert BrandSpec(**_spec()).gate == BrandGate()  # no section: no opt-ins
    assert BrandGate().thresholds() == {}
    for name, field in BrandGate.model_fields.items():
        assert field.description, f"BrandGate.{name} has no description"


def test_sample_brand_documents_the_gate_section() -> None:
    """data/brands/acme/brand.yaml shows a commented-out gate: example whose keys are real BrandGate fields."""
    import re

    import yaml

    from brandtune.config import BrandGate

    text = (REPO / "data/brands/acme/brand.yaml").read_text()
    block = re.search(r"^# gate:\n((?:#   .*\n)+)", text, re.MULTILINE)
    assert block, "brand.yaml has no commented-out gate: example"
    example = yaml.safe_load(
        "gate:\n" + re.sub(r"^# ", "", block.group(0).split("\n", 1)[1], flags=re.MULTILINE)
    )
    BrandGate.model_validate(example["gate"])
    assert load_brand(REPO / "data/brands/acme").gate == BrandGate()  # commented out: the default gate


def test_yaml_overrides_apply_after_file(tmp_path: Path) -> None:
    path = tmp_path / "ingest.yaml"
    path.write_text("resolution: 128\nmin_images: 2\n")
    cfg = load_yaml_model(IngestConfig, path, {"resolution": 256, "crop": None})
    assert cfg.resolution == 256 and cfg.min_images == 2 and cfg.crop == "keep"


def test_ingest_config_follows_brand() -> None:
    brand = BrandSpec(**_spec(resolution=128))
    cfg = IngestConfig.for_brand(brand, min_images=1)
    assert (cfg.resolution, cfg.trigger, cfg.subject, cfg.min_images) == (128, "acme", "bottle", 1)
    assert cfg.effective_min_side == 128
    assert "workers" not in cfg.fingerprint_fields()
    assert cfg.background == "#ffffff" and cfg.masks == "auto"


def test_brand_background_reaches_ingest() -> None:
    brand = BrandSpec(**_spec(background="#102030"))
    assert IngestConfig.for_brand(brand).background == "#102030"
    assert IngestConfig.for_brand(brand, background="#000000").background == "#000000"
    with pytest.raises(ValidationError):
        BrandSpec(**_spec(background="white"))


def test_settings_from_env_touches_nothing(tmp_path: Path) -> None:
    home = tmp_path / "nothere"
    settings = Settings.from_env({"BRANDTUNE_HOME": str(home)})
    assert settings.tracking_uri == f"sqlite:///{home / 'mlflow.db'}"
    assert settings.datasets_dir == home / "datasets"
    assert not home.exists()
    remote = Settings.from_env({"BRANDTUNE_HOME": str(home), "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"})
    assert remote.tracking_uri == "http://127.0.0.1:5000"


def test_aspects_default_and_parse() -> None:
    assert BrandSpec(**_spec()).aspects == ["1:1"]
    assert BrandSpec(**_spec(aspects=["1:1", " 2 : 3", "16:9"])).aspects == ["1:1", "2:3", "16:9"]
    assert parse_aspect("1:3") == (1, 3) and parse_aspect("3:1") == (3, 1)


@pytest.mark.parametrize(
    ("aspects", "needle"),
    [
        (["2x3"], "aspect '2x3' is not 'W:H'"),
        (["portrait"], "aspect 'portrait' is not 'W:H'"),
        (["1.5:1"], "aspect '1.5:1' is not 'W:H'"),
        (["0:1"], "aspect '0:1' has a zero side"),
        (["4:1"], "aspect '4:1' is wider than 1:3 .. 3:1"),
        (["1:4"], "aspect '1:4' is wider than 1:3 .. 3:1"),
        (["2:3", "2:3"], "listed twice"),
        ([], "at least 1 item"),
    ],
)
def test_bad_aspects_name_the_value(tmp_path: Path, aspects: list, needle: str) -> None:
    brand = tmp_path / "acme"
    brand.mkdir()
    (brand / "brand.yaml").write_text(yaml.safe_dump(_spec(aspects=aspects)))
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_brand(brand)


@pytest.mark.parametrize(
    ("aspect", "side", "multiple", "size"),
    [
        ("1:1", 64, 16, (64, 64)),
        ("2:3", 64, 16, (48, 80)),  # exact 52.3 x 78.4: each side to the nearest multiple of 16
        ("3:2", 64, 16, (80, 48)),
        ("16:9", 64, 16, (80, 48)),  # exact 85.3 x 48.0
        ("1:3", 64, 16, (32, 112)),  # exact 37.0 x 110.9
        ("2:3", 512, 64, (448, 640)),  # SD 1.5: exact 418.0 x 627.1
        ("16:9", 1024, 16, (1360, 768)),  # FLUX: exact 1365.3 x 768.0
        ("1:3", 32, 16, (16, 48)),  # exact 18.5 x 55.4
    ],
)
def test_aspect_size_keeps_the_area_on_the_grid(aspect: str, side: int, multiple: int, size: tuple) -> None:
    width, height = aspect_size(aspect, side, multiple)
    assert (width, height) == size
    assert width % multiple == 0 and height % multiple == 0
    if side >= 512:
        assert abs(width * height / side**2 - 1) < 0.1  # 448 x 640 is 9% over 512 x 512: a coarse grid
        w, h = parse_aspect(aspect)
        assert abs((width / height) / (w / h) - 1) < 0.1


def test_aspect_size_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="positive side"):
        aspect_size("1:1", 64, 0)
    with pytest.raises(ValueError, match="not 'W:H'"):
        aspect_size("wide", 64, 16)


@pytest.mark.parametrize(
    ("aspects", "sizes"), [(None, [(64, 64)]), (["1:1", "2:3", "16:9"], [(64, 64), (48, 80), (80, 48)])]
)
def test_validation_samples_the_brands_aspects(tmp_path: Path, aspects: list | None, sizes: list) -> None:
    from brandtune.config import TrainConfig
    from brandtune.models import resolve_base
    from brandtune.training.plan import TrainPlan
    from brandtune.training.validation import validation_sizes

    brand = BrandSpec(**_spec(**({"aspects": aspects} if aspects else {})))
    plan = TrainPlan(
        TrainConfig(brand="acme"), brand, resolve_base("builtin:tiny"), tmp_path, "f", [], 64, tmp_path, "h"
    )
    assert validation_sizes(plan) == sizes
