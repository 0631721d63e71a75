"""The small CLIP and T5 tokenizers that brandtune builds itself, for the built-in tiny models.

CLIP (every family's CLIP text encoders): the vocabulary follows CLIP's layout so that
``transformers.CLIPTokenizer`` loads it unchanged: the 256 byte symbols of GPT-2's byte-to-unicode table, the
same 256 with the end-of-word suffix ``</w>``, then one token per learned merge, then ``<|startoftext|>`` and
``<|endoftext|>``. Because every byte is in the vocabulary, any text tokenizes (unknown words fall back to smaller
pieces). Merges are learned on a fixed built-in word list by a small BPE trainer here with a total order on ties
(the ``tokenizers`` trainer breaks ties by hash-map order and gives different merges from run to run), so the
files are byte-identical on every build.

T5 (the T5 encoder of the FLUX.1 and SD3 tiny models): a SentencePiece-style Unigram model in T5's layout, ``<pad>``
= 0, ``</s>`` = 1, ``<unk>`` = 2, then one piece per word of the same word list (``▁word``, scored by its
log-frequency), the word boundary ``▁`` and single characters (printable ASCII, Latin-1 letters and a few common
typographic marks), so that any Latin-script text tokenizes and other characters become ``<unk>`` as in T5.
transformers 5 rebuilds ``T5TokenizerFast`` from the Unigram pieces of ``tokenizer.json`` when it loads a folder
(pre-tokenizer, decoder and ``</s>`` post-processor included), so the files here are what it would rebuild. The
pieces and scores are fixed (no trainer), so the files are byte-identical on every build too.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
from collections import Counter
from pathlib import Path

logger = logging.getLogger(__name__)

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
MODEL_MAX_LENGTH = 77

T5_PAD_TOKEN = "<pad>"
T5_EOS_TOKEN = "</s>"
T5_UNK_TOKEN = "<unk>"
# The tiny T5 encoders' sequence length: tests and training use short captions (FLUX.1 uses 512, SD3 256).
T5_MAX_LENGTH = 64
WORD_BOUNDARY = "\u2581"  # SentencePiece's "▁", which marks the start of a word

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
# The T5 tokenizer's single characters beyond printable ASCII and Latin-1: dashes, curly quotes, ellipsis and
# the like, which captions copied from the web carry.
_T5_EXTRA_CHARACTERS = "\u2013\u2014\u2018\u2019\u201c\u201d\u2026\u2022\u20ac\u2122"
# Unigram log-probabilities of the pieces that are not corpus words: far below any word's, so a corpus word is
# always one piece and anything else is spelled out a character at a time.
_T5_BOUNDARY_SCORE = -12.0
_T5_CHARACTER_SCORE = -14.0


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


def t5_digest() -> str:
    """A short hash of what the T5 tokenizer is made of (part of the FLUX.1 and SD3 models' config hash).

    The corpus itself is covered by :func:`corpus_digest`; this covers the T5 vocabulary built from it.
    """
    payload = json.dumps({"vocab": build_t5_vocab()}, ensure_ascii=True)
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


def _t5_characters() -> list[str]:
    """The T5 tokenizer's single-character pieces: printable ASCII, Latin-1's printable characters (but the soft
    hyphen) and :data:`_T5_EXTRA_CHARACTERS`, in code-point order."""
    ascii_printable = [chr(c) for c in range(0x21, 0x7F)]
    latin1 = [chr(c) for c in range(0xA1, 0x100) if c != 0xAD]
    return ascii_printable + latin1 + sorted(_T5_EXTRA_CHARACTERS)


def build_t5_vocab() -> list[tuple[str, float]]:
    """Build the T5-layout Unigram vocabulary.

    Returns:
        ``(piece, log-probability)`` pairs in id order: the special tokens (``<pad>``, ``</s>``, ``<unk>``), the
        corpus words as ``▁word`` (most frequent first, ties alphabetical), ``▁`` and the single characters.
    """
    counts = Counter(word for line in _CORPUS for word in line.lower().split())
    total = sum(counts.values())
    vocab: list[tuple[str, float]] = [(T5_PAD_TOKEN, 0.0), (T5_EOS_TOKEN, 0.0), (T5_UNK_TOKEN, 0.0)]
    for word in sorted(counts, key=lambda w: (-counts[w], w)):
        vocab.append((WORD_BOUNDARY + word, round(math.log(counts[word] / total), 4)))
    vocab.append((WORD_BOUNDARY, _T5_BOUNDARY_SCORE))
    vocab += [(char, _T5_CHARACTER_SCORE) for char in _t5_characters()]
    return vocab


def write_t5_tokenizer_files(folder: Path, model_max_length: int = T5_MAX_LENGTH) -> None:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` for ``T5TokenizerFast.from_pretrained(folder)``.

    The files are byte-identical on every call with the same arguments (and ``tokenizers`` version). No sentinel
    ``<extra_id_*>`` tokens: the tiny models' T5 is an encoder only.

    Args:
        folder: An existing folder; the two files are written into it (replacing any already there).
        model_max_length: The tokenizer's ``model_max_length``.

    Raises:
        ValueError: ``model_max_length`` is not a positive integer.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    if isinstance(model_max_length, bool) or not isinstance(model_max_length, int) or model_max_length < 1:
        raise ValueError(f"model_max_length must be a positive integer, got {model_max_length!r}.")
    vocab = build_t5_vocab()
    unk_id = next(i for i, (piece, _) in enumerate(vocab) if piece == T5_UNK_TOKEN)
    eos_id = next(i for i, (piece, _) in enumerate(vocab) if piece == T5_EOS_TOKEN)
    tokenizer = Tokenizer(Unigram(vocab, unk_id=unk_id, byte_fallback=False))
    # As transformers' T5Tokenizer sets them up (it rebuilds these on load and keeps the post-processor).
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement=WORD_BOUNDARY, prepend_scheme="always", split=True),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement=WORD_BOUNDARY, prepend_scheme="always", split=True)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=["$A", T5_EOS_TOKEN],
        pair=["$A", T5_EOS_TOKEN, "$B", T5_EOS_TOKEN],
        special_tokens=[(T5_EOS_TOKEN, eos_id)],
    )
    tokenizer.add_special_tokens(
        [
            AddedToken(tok, special=True, normalized=False)
            for tok in (T5_PAD_TOKEN, T5_EOS_TOKEN, T5_UNK_TOKEN)
        ]
    )
    config = {
        "tokenizer_class": "T5Tokenizer",
        "pad_token": T5_PAD_TOKEN,
        "eos_token": T5_EOS_TOKEN,
        "unk_token": T5_UNK_TOKEN,
        "extra_ids": 0,
        "model_max_length": model_max_length,
    }
    (folder / "tokenizer.json").write_text(tokenizer.to_str(pretty=True) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    logger.debug("wrote a T5 tokenizer with %d pieces to %s", len(vocab), folder)
