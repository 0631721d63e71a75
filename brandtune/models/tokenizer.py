"""A small CLIP tokenizer that brandtune builds itself, for the built-in tiny models.

The vocabulary follows CLIP's layout so that ``transformers.CLIPTokenizer`` loads it unchanged: the 256 byte
symbols of GPT-2's byte-to-unicode table, the same 256 with the end-of-word suffix ``</w>``, then one token per
learned merge, then ``<|startoftext|>`` and ``<|endoftext|>``. Because every byte is in the vocabulary, any text
tokenizes (unknown words fall back to smaller pieces). Merges are learned on a fixed built-in word list by a
small BPE trainer here with a total order on ties (the ``tokenizers`` trainer breaks ties by hash-map order and
gives different merges from run to run), so the files are byte-identical on every build.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections import Counter
from pathlib import Path

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
MODEL_MAX_LENGTH = 77

# Words a brand's captions and prompts are made of: product kinds, colours, materials, settings, styles and the
# common words around them. Each line is one caption-like phrase; order does not matter for the result's content,
# but it is fixed so the trained merges are too.
_CORPUS: tuple[str, ...] = (
    "a photo of acme bottle on a beach at sunset in the snow",
    "a photograph of a product on a white studio backdrop with soft light",
    "a close up shot of a sneaker shoe on a wooden table in a kitchen",
    "an image of a mug cup with a handle on a desk in an office",
    "a picture of a bag backpack handbag tote on a street in the city",
    "a can jar box tube lamp chair watch phone bottle cap lid label logo",
    "red orange yellow green teal blue purple pink brown black white grey gray gold silver",
    "dark light bright pale pastel neon matte glossy shiny metallic transparent clear",
    "glass metal plastic wood wooden leather paper ceramic cotton fabric stone marble concrete",
    "beach sand sea ocean water waves forest tree trees grass field mountain mountains snow ice sky clouds",
    "studio kitchen table desk shelf room interior garden park street city night day morning evening",
    "sunset sunrise golden hour dramatic lighting shadow shadows reflection background foreground",
    "product shot advertising campaign catalog packshot flat lay minimal clean modern vintage",
    "high quality detailed sharp focus professional photography centered composition",
    "the a an of on in at with and or by for to from under near next behind front top side view",
    "is are has have holding standing sitting lying floating placed resting",
    "small large big tiny tall short round square new old one two three many",
    "blurry low quality watermark text distorted ugly bad deformed",
    "man woman person people hand hands model wearing using",
    "bottles sneakers shoes mugs cups bags cans jars boxes products colors colours photos",
    "stripe circle triangle star mark kitchen counter",
)
# Learn merges until every word of the corpus is one token (training stops early when no pair is left).
_MAX_MERGES = 1500


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters.

    Returns:
        A dict from byte value to a one-character string.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def corpus_digest() -> str:
    """A short hash of the built-in word list and merge budget (part of the builtin models' config hash)."""
    payload = json.dumps({"corpus": _CORPUS, "max_merges": _MAX_MERGES})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _train_merges() -> list[tuple[str, str]]:
    """Learn BPE merges on the built-in corpus, deterministically.

    Words are split on whitespace and lower-cased (the corpus is plain ASCII, which CLIP's byte-level map leaves
    unchanged); the last symbol of each word carries ``</w>``. Each round merges the most frequent adjacent pair,
    ties going to the lexicographically smallest pair, until no pair is left or the budget is spent.

    Returns:
        The merges in the order they were learned.
    """
    counts = Counter(word for line in _CORPUS for word in line.lower().split())
    words: dict[tuple[str, ...], int] = {}
    for word, count in sorted(counts.items()):
        words[(*word[:-1], word[-1] + END_OF_WORD)] = count
    merges: list[tuple[str, str]] = []
    while len(merges) < _MAX_MERGES:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in words.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        words = {_merge_pair(symbols, best): count for symbols, count in words.items()}
    return merges


def _merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    """Replace every adjacent occurrence of ``pair`` in ``symbols`` by its concatenation."""
    out: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def build_clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Build the CLIP-layout vocabulary and merge list.

    Returns:
        ``(vocab, merges)``: token to id, and the merges in priority order.
    """
    base = list(bytes_to_unicode().values())
    tokens = base + [b + END_OF_WORD for b in base]
    seen = set(tokens)
    merges: list[tuple[str, str]] = []
    for left, right in _train_merges():
        merged = left + right
        if merged in seen:
            continue
        seen.add(merged)
        tokens.append(merged)
        merges.append((left, right))
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_clip_tokenizer_files(dest: Path) -> None:
    """Write ``vocab.json`` and ``merges.txt`` for ``CLIPTokenizer.from_pretrained(dest, model_max_length=77)``.

    Args:
        dest: An existing folder; the two files are written into it.
    """
    vocab, merges = build_clip_vocab()
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, sort_keys=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (dest / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    logger.debug("wrote a CLIP tokenizer with %d tokens and %d merges to %s", len(vocab), len(merges), dest)
