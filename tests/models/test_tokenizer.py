"""brandtune.models.tokenizer: the built-in models' tokenizer covers caption words and any text."""

from __future__ import annotations

import pytest
from model_helpers import PROMPT

from brandtune.models import ResolvedBase, load_components

pytestmark = pytest.mark.usefixtures("torch_threads", "from_config")


def test_tokenizer_covers_caption_words_and_any_text(tiny: ResolvedBase) -> None:
    comps = load_components(tiny)
    (tokenizer,) = comps.tokenizers
    (text_encoder,) = comps.text_encoders
    assert tokenizer.model_max_length == 77
    ids = tokenizer(PROMPT).input_ids
    assert len(ids) == len(PROMPT.split()) + 2, "each caption word is one token"
    assert tokenizer("Zürich, 2026 — 新しい!").input_ids[1:-1], "any text tokenizes"
    assert tokenizer.unk_token_id not in tokenizer("Zürich 新しい").input_ids[1:-1]
    assert text_encoder.config.eos_token_id == tokenizer.eos_token_id
    assert text_encoder.config.bos_token_id == tokenizer.bos_token_id
    assert text_encoder.config.vocab_size == len(tokenizer)
    assert type(comps.noise_scheduler).__name__ == "DDPMScheduler"
    assert comps.denoiser.config.cross_attention_dim == text_encoder.config.hidden_size
