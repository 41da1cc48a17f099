"""A cheap deterministic tokenizer (one token per word or punctuation mark) and filler text."""

# Counting rule, chosen to reproduce the captured vLLM token counts (BERT tokenizer):
# completions add 2 special tokens to the prompt; chat adds 2 plus 2 per message.

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Sequence
from typing import Any

_PIECE = re.compile(r"\w+|[^\w\s]")
BOS_ID = 101
EOS_ID = 102
SEP_ID = 102
_VOCAB_BASE = 1000
_VOCAB_SPAN = 29000

FILLER_WORDS = (
    "the", "model", "engine", "token", "batch", "cache", "block", "prefix", "decode", "prefill",
    "river", "stone", "light", "garden", "window", "signal", "harbor", "meadow", "copper",
    "orbit", "lantern", "canvas", "velvet", "summit", "puzzle", "rhythm", "willow", "ember",
    "cobalt", "falcon", "quartz", "saddle", "tundra", "violet", "zephyr", "anchor", "bramble",
    "cinder", "delta", "ferry", "glacier", "hollow", "island", "jasper", "kettle", "lagoon",
    "marble", "nectar", "oasis", "pepper", "quill", "raven", "spruce", "timber", "umbra",
)


def pieces(text: str) -> list[str]:
    """Split text into token pieces."""
    return _PIECE.findall(text)


def piece_id(piece: str) -> int:
    """A stable id for a piece (crc32, so equal across processes)."""
    return _VOCAB_BASE + zlib.crc32(piece.lower().encode()) % _VOCAB_SPAN


def encode_prompt(text: str) -> list[int]:
    """Token ids of a completion prompt, with the special tokens."""
    return [BOS_ID, *(piece_id(p) for p in pieces(text)), EOS_ID]


def message_text(content: Any) -> str:
    """Text of a chat message's content (string or list of text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def encode_chat(messages: Sequence[dict[str, Any]]) -> list[int]:
    """Token ids of a chat prompt: 2 specials, then per message 2 role tokens and its content."""
    ids = [BOS_ID]
    for message in messages:
        ids.append(piece_id(str(message.get("role", "user"))))
        ids.extend(piece_id(p) for p in pieces(message_text(message.get("content"))))
        ids.append(SEP_ID)
    ids.append(EOS_ID)
    return ids


def block_hashes(token_ids: Sequence[int], block_size: int) -> list[int]:
    """Chained hashes of the full blocks of a token sequence (ints hash stably)."""
    hashes: list[int] = []
    parent = 0
    for start in range(0, len(token_ids) - block_size + 1, block_size):
        parent = hash((parent, tuple(token_ids[start:start + block_size])))
        hashes.append(parent)
    return hashes


class FillerText:
    """Seeded generator of output token texts."""

    def __init__(self, seed: int, fake_response: str | None = None) -> None:
        self._seed = seed
        self._fake = [(" " if i else "") + p for i, p in enumerate(pieces(fake_response or ""))]

    @property
    def fixed_length(self) -> int | None:
        """Number of tokens of the configured fake response, if any."""
        return len(self._fake) if self._fake else None

    def tokens(self, request_seed: int, count: int) -> list[str]:
        """The first ``count`` output token texts for a request."""
        if self._fake:
            return self._fake[:count]
        rng = random.Random(self._seed * 1_000_003 + request_seed)
        return [" " + rng.choice(FILLER_WORDS) for _ in range(count)]
