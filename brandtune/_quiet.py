"""Narrow filters for third-party log messages that a brandtune user cannot act on.

Each entry of :data:`QUIETED` names the logger that emits one message, a pattern matched against that message, and
why it is dropped. Only records of that logger matching that pattern are dropped: every other message of the same
logger still shows, and no logger's level or handlers change. :func:`install` is idempotent; the functions that
trigger the messages (pipeline and model loading, logging an adapter to MLflow) call it before they do, and nothing
is installed at import time.

Not filtered but avoided: diffusers' "No LoRA keys associated to CLIPTextModel found" comes from offering a
UNet-only adapter to the text encoder; `brandtune.models.loading.load_adapter` loads such an adapter into the UNet
only, so the message is never provoked and stays visible for adapters where it means something. FLUX's and SD3's
``load_lora_weights`` prepare the transformer's part in ways of their own, so a transformer-only adapter goes through
it whole, with that one message quieted for the call (:func:`quieted_while`): the file was just read and holds no
text-encoder part, which is all the message says.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Quieted:
    """One filtered message.

    Attributes:
        logger: Name of the logger that emits it (the module's ``__name__``).
        pattern: Regular expression searched in the formatted message.
        reason: Why a brandtune user gains nothing from seeing it.
    """

    logger: str
    pattern: re.Pattern[str]
    reason: str


QUIETED: tuple[Quieted, ...] = (
    Quieted(
        "transformers.utils.import_utils",
        re.compile(r"^`\w+ImageProcessor` requires torchvision \(not installed\); falling back to `\w+Pil`"),
        "diffusers' pipeline modules import CLIP/Siglip image processors brandtune never uses; torchvision cannot "
        "be installed beside the CPU torch build, and the PIL fallback is what it would use anyway",
    ),
    Quieted(
        "diffusers.models.modeling_utils",
        re.compile(r"^There are modules in \w+ that should be kept in float32: \[\]\. Casting directly"),
        "an empty list: the model has no float32-only modules, so casting it with to() (as training does for "
        "its frozen parts) loses nothing; the message with a non-empty list still shows",
    ),
    Quieted(
        "mlflow.store.db.utils",
        re.compile(r"^(Creating initial MLflow database tables|Updating database tables)"),
        "the one-time set-up of a new sqlite tracking store (BRANDTUNE_HOME's default); a failed migration is an "
        "error, which still shows",
    ),
    Quieted(
        "mlflow.system_metrics.system_metrics_monitor",
        re.compile(
            r"^(Skip logging GPU metrics|Started monitoring system metrics|Stopping system metrics monitoring"
            r"|Successfully terminated system metrics monitoring)"
        ),
        "start and stop notices of the CPU/GPU monitor brandtune turns on for every training run; its metrics "
        "are in the MLflow run",
    ),
    Quieted(
        "mlflow.utils.requirements_utils",
        re.compile(r"^Found torch version \([^)]*\) contains a local version label \(\+\w+\)"),
        "the +cpu/+cuXXX build label of torch is this machine's wheel; MLflow records the plain version, which is "
        "what a serving machine should install",
    ),
)


class MessageFilter(logging.Filter):
    """Drops the records whose message matches ``pattern``; lets everything else through."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed record is the handler's to report, not ours to drop
            return True
        return not self.pattern.search(message)


def install() -> None:
    """Attach each :data:`QUIETED` filter to its logger, once (calling it again adds nothing)."""
    for quieted in QUIETED:
        target = logging.getLogger(quieted.logger)
        if not any(isinstance(f, MessageFilter) and f.pattern == quieted.pattern for f in target.filters):
            target.addFilter(MessageFilter(quieted.pattern))


#: diffusers' notice that a LoRA file has no part for a text encoder it was offered to.
NO_TEXT_ENCODER_KEYS = Quieted(
    "diffusers.loaders.lora_base",
    re.compile(r"^No LoRA keys associated to \w+ found with the prefix='text_encoder(_\d)?'"),
    "said of an adapter file brandtune has just read and knows to hold no text-encoder part",
)


@contextmanager
def quieted_while(quieted: Quieted) -> Iterator[None]:
    """Drop one message of one logger for the duration of a ``with`` block only."""
    target = logging.getLogger(quieted.logger)
    message_filter = MessageFilter(quieted.pattern)
    target.addFilter(message_filter)
    try:
        yield
    finally:
        target.removeFilter(message_filter)


@contextmanager
def loading_bars_off() -> Iterator[None]:
    """diffusers' "Loading pipeline components" and transformers' "Loading weights" progress bars switched off
    inside the block, and restored after: they cover a fraction of a second of loading that brandtune reports in
    its own log, and in a Prefect task's log each redraw is a line of its own."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    was = [(lib, lib.is_progress_bar_enabled()) for lib in (diffusers_logging, transformers_logging)]
    for lib, _ in was:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, enabled in was:
            if enabled:
                lib.enable_progress_bar()
