"""Where sampling runs: the ``device`` and ``dtype`` fields of generation and evaluation, and their resolver.

``GenerateConfig`` and ``EvalConfig`` (and through them the Prefect forms and ``brandtune generate`` /
``brandtune evaluate``) take the same two fields, declared once here. :func:`resolve_placement` turns them into
the device and weight dtype a job loads its pipeline (and its CLIP/DINO scorers) on::

    auto   -> cuda when a CUDA GPU is visible, else cpu
    auto   -> bfloat16 on a CUDA GPU that supports it natively, else float16 on CUDA; float32 on the CPU

Resolved values are what a generation manifest and a campaign key record: images made on another device or in
another dtype differ (the seeds' noise does not: it is drawn on the CPU, see :func:`brandtune.sampling.sample_batch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from brandtune.errors import ConfigError

if TYPE_CHECKING:
    import torch

DeviceName = Literal["auto", "cpu", "cuda"]
DtypeName = Literal["auto", "float32", "float16", "bfloat16"]

Device = Annotated[
    DeviceName,
    Field(
        description="Where the pipeline samples: 'cuda' (a CUDA GPU), 'cpu', or 'auto' (cuda when a CUDA GPU is "
        "visible, else cpu). Recorded with the images: another device makes other pixels."
    ),
]
Dtype = Annotated[
    DtypeName,
    Field(
        description="Weight dtype of the pipeline: float32, float16, bfloat16, or 'auto' (bfloat16 on a CUDA GPU "
        "that supports it, else float16 on CUDA; float32 on the CPU). Recorded with the images."
    ),
]

#: What every manifest written before these fields existed was made with (the pipeline stayed on the CPU in the
#: dtype diffusers loads by default).
LEGACY_DEVICE, LEGACY_DTYPE = "cpu", "float32"


@dataclass(frozen=True)
class Placement:
    """A resolved device (``"cpu"``, ``"cuda"``) and weight dtype (``"float32"``, ``"float16"``, ``"bfloat16"``)."""

    device: str
    dtype: str

    def __str__(self) -> str:
        return f"{self.device}/{self.dtype}"

    def torch_dtype(self) -> torch.dtype:
        """The dtype as a ``torch.dtype``."""
        import torch

        return getattr(torch, self.dtype)

    @property
    def legacy(self) -> bool:
        """True for cpu/float32: what every job made before device and dtype were recorded."""
        return (self.device, self.dtype) == (LEGACY_DEVICE, LEGACY_DTYPE)


def resolve_placement(device: str = "auto", dtype: str = "auto", *, source: str = "device") -> Placement:
    """The device and dtype ``device`` / ``dtype`` stand for on this machine (``auto`` filled in).

    Args:
        device: ``auto``, ``cpu`` or ``cuda``.
        dtype: ``auto``, ``float32``, ``float16`` or ``bfloat16``.
        source: How the user gave them, for the error line (``--device``, ``evaluation.device``, ...).

    Raises:
        ConfigError: ``cuda`` without a visible CUDA GPU, ``bfloat16`` on a GPU without native bf16, or an unknown
            name; one line saying what to do.
    """
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"{source} {device!r} is not a device: use auto, cpu or cuda")
    if dtype not in ("auto", "float32", "float16", "bfloat16"):
        raise ConfigError(f"dtype {dtype!r} is not a weight dtype: use auto, float32, float16 or bfloat16")
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise ConfigError(
            f"{source} 'cuda': no CUDA GPU is visible here (torch.cuda.is_available() is False); use 'auto' or "
            "'cpu', or run on a machine with a CUDA GPU (check the driver and CUDA_VISIBLE_DEVICES)"
        )
    resolved = device if device != "auto" else ("cuda" if cuda else "cpu")
    if resolved == "cuda":
        bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
        if dtype == "bfloat16" and not bf16:
            raise ConfigError(
                "dtype 'bfloat16': this GPU has no native bf16 support; use 'float16' or 'auto'"
            )
        return Placement("cuda", dtype if dtype != "auto" else ("bfloat16" if bf16 else "float16"))
    return Placement("cpu", dtype if dtype != "auto" else "float32")
