"""Write a base model out as a plain diffusers folder that loads without brandtune.

The copy holds the resolved folder's content files (brandtune's hidden marker and cache files stay behind), so
its content revision equals the source's, plus a hidden ``.brandtune-export.json`` recording where it came from.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

from brandtune.errors import ModelResolutionError
from brandtune.fsutil import atomic_write_json, replace_dir
from brandtune.models.family import read_json
from brandtune.models.resolve import resolve_base
from brandtune.models.revision import content_files
from brandtune.settings import Settings

logger = logging.getLogger(__name__)

EXPORT_FILE = ".brandtune-export.json"


def export_base(
    ref: str, dest: Path | str, *, overwrite: bool = False, settings: Settings | None = None
) -> Path:
    """Copy any resolvable base model to ``dest`` as a plain diffusers folder, atomically.

    ``StableDiffusionPipeline.from_pretrained(dest)`` (or the SDXL class) loads the result with no brandtune
    import. The copy is assembled in a temporary folder beside ``dest`` and moved into place at the end, so an
    interrupted export leaves no half-written ``dest``.

    Args:
        ref: Anything :func:`resolve_base` accepts.
        dest: The folder to write; must not exist or be empty unless ``overwrite`` is set.
        overwrite: Replace a non-empty ``dest``.
        settings: Where brandtune keeps its state; read from the environment when omitted.

    Returns:
        ``dest`` as an absolute path.

    Raises:
        ModelResolutionError: ``ref`` does not resolve, or ``dest`` is a file, non-empty without ``overwrite``,
            or overlaps the source folder.
    """
    resolved = resolve_base(ref, settings=settings)
    target = Path(dest).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise ModelResolutionError(
            f"Cannot export {ref!r} to {str(target)!r}: it is a file. Choose a folder."
        )
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise ModelResolutionError(
            f"Cannot export {ref!r} to {str(target)!r}: the folder is not empty. Choose a new or empty folder, "
            "or pass overwrite=True (--overwrite) to replace its content."
        )
    source = resolved.path.resolve()
    real_target = target.resolve()
    if real_target == source or source.is_relative_to(real_target) or real_target.is_relative_to(source):
        raise ModelResolutionError(
            f"Cannot export {ref!r} to {str(target)!r}: it overlaps the model's own folder {str(source)!r}."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.export-", dir=target.parent))
    try:
        for rel, src in content_files(source):
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, out)  # follows symlinks: hub snapshots link into a blob store
        _drop_missing_components(tmp)
        atomic_write_json(tmp / EXPORT_FILE, {"ref": resolved.ref, **resolved.provenance()})
        replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("exported %s (%s) to %s", resolved.name, resolved.revision, target)
    return target


def _drop_missing_components(folder: Path) -> None:
    """Null out components that ``model_index.json`` names but the copy lacks (a hub download skips the
    safety checker), so that a plain ``from_pretrained`` does not look for them."""
    index_path = folder / "model_index.json"
    index = read_json(index_path)
    missing = [
        key
        for key, value in index.items()
        if not key.startswith("_")
        and isinstance(value, list)
        and len(value) == 2
        and value[0] is not None
        and not (folder / key).is_dir()
    ]
    if not missing:
        return
    for key in missing:
        index[key] = [None, None]
    if "safety_checker" in missing:
        index["requires_safety_checker"] = False
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("export: %s not in the source folder; set to null in model_index.json", ", ".join(missing))
