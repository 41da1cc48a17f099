"""Prompt prefixes as chains of block hashes: rendered text (approximate) or token ids (precise).

Both chains are *chained*: block i's hash covers block i and, through its parent, every
block before it, so two prompts share block i's hash exactly when they share their first
i + 1 blocks. The hash is BLAKE2b (8 bytes, masked to 63 bits so every JSON reader and the
F5's Tcl keep it exact): stable across processes and machines, unlike Python's ``hash``.

Approximate chains cut the rendered prompt into blocks of characters, not tokens: no
tokenizer is needed (the F5 iRule can do the same with ``string range``), and for exact
prefix sharing a character boundary is as good as a token boundary. Precise chains cut token
ids into the engine's KV blocks, so they name the very blocks the engine caches.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from typing import Any

MASK63 = (1 << 63) - 1
DEFAULT_BLOCK_CHARS = 256
"""Characters per approximate block (about 64 tokens of English)."""
DEFAULT_MAX_BLOCKS = 64
"""Blocks sent per request at most (about 16k characters): a route call stays small."""


def _h(parent: int, payload: bytes) -> int:
    digest = hashlib.blake2b(payload, digest_size=8, key=parent.to_bytes(8, "little")).digest()
    return int.from_bytes(digest, "little") & MASK63


def text_of(content: Any) -> str:
    """The text of a chat message's content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content
                       if isinstance(part, dict) and isinstance(part.get("text", ""), str))
    return ""


def render_chat(messages: Sequence[Any]) -> str:
    """Every message in order, each as its role and its text (so a role change is a change)."""
    parts: list[str] = []
    for message in messages:
        if isinstance(message, dict):
            parts.append(f"<|{message.get('role', '')}|>{text_of(message.get('content'))}\n")
    return "".join(parts)


def render_prompt(prompt: Any) -> str:
    """A completions prompt as text: a string, the first of a batch, or token ids."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, str):
            return first
        if isinstance(first, int):
            return " ".join(str(t) for t in prompt)
        if isinstance(first, list):
            return " ".join(str(t) for t in first)
    return ""


def render_body(kind: str, body: dict[str, Any]) -> str:
    """The prompt of an OpenAI request body (``chat`` or ``completions``) as one string."""
    if kind == "chat":
        messages = body.get("messages")
        return render_chat(messages) if isinstance(messages, list) else ""
    return render_prompt(body.get("prompt"))


def text_block_hashes(text: str, block_chars: int = DEFAULT_BLOCK_CHARS,
                      max_blocks: int = DEFAULT_MAX_BLOCKS) -> list[int]:
    """Chained hashes of the full ``block_chars``-character blocks of ``text`` (at most
    ``max_blocks``)."""
    out: list[int] = []
    parent = 0
    full = min(len(text) // block_chars, max_blocks)
    for i in range(full):
        parent = _h(parent, text[i * block_chars:(i + 1) * block_chars].encode("utf-8",
                                                                              "surrogatepass"))
        out.append(parent)
    return out


def key_hash(key: str) -> int:
    """One block standing for an opaque prefix key (what an F5 iRule may send)."""
    return _h(0, b"key:" + key.encode("utf-8", "surrogatepass"))


def token_block_keys(token_ids: Sequence[int], block_size: int, parent: int = 0,
                     max_blocks: int | None = None, extra: bytes = b"") -> list[int]:
    """Chained keys of the full ``block_size``-token blocks of ``token_ids`` after ``parent``.

    The same function keys the blocks an engine reports (from its events' token ids) and
    the blocks of a request (from its tokenization), so the two meet without depending on
    the engine's own block hashes (vLLM seeds those per process).
    """
    out: list[int] = []
    full = len(token_ids) // block_size
    if max_blocks is not None:
        full = min(full, max_blocks)
    for i in range(full):
        chunk = array("q", token_ids[i * block_size:(i + 1) * block_size]).tobytes()
        parent = _h(parent, chunk + extra if extra else chunk)
        out.append(parent)
    return out
