"""Tiny random CLIP and DINOv2 folders for the model-based metrics (tests/evaluation/): built from config and
saved with save_pretrained (safetensors), as a user's local model folders would be. Plumbing, not values."""

from __future__ import annotations

from pathlib import Path


def save_tiny_clip(folder: Path) -> Path:
    """A 2-layer CLIPModel (32 px images, 16-dim projection) with its tokenizer and processor in ``folder``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from brandtune.models.tokenizer import write_clip_tokenizer_files

    write_clip_tokenizer_files(folder)
    tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    text = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2}
    vision = {**text, "image_size": 32, "patch_size": 8}
    config = CLIPConfig(
        text_config={
            **text,
            "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config=vision,
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_dino(folder: Path) -> Path:
    """A 2-layer DINOv2 (28 px images, 32-dim CLS) in ``folder``; no preprocessor_config.json, so the loader
    takes the config's size and the ImageNet statistics."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        image_size=28,
        patch_size=7,
    )
    torch.manual_seed(0)
    Dinov2Model(config).save_pretrained(folder)
    return folder
