"""Approximate and precise block chains: every message counts, hashes are stable."""

from __future__ import annotations

from shared.prefix import (
    key_hash,
    render_body,
    render_chat,
    text_block_hashes,
    token_block_keys,
)

SYSTEM = {"role": "system", "content": "You are a careful assistant. " * 20}


def test_every_message_is_rendered_in_order_with_its_role() -> None:
    text = render_chat([SYSTEM, {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": [{"type": "text", "text": "yo"}]}])
    assert text.index("<|system|>") < text.index("<|user|>hi") < text.index("<|assistant|>yo")
    as_user = render_chat([{**SYSTEM, "role": "user"}])
    assert text_block_hashes(as_user, 16)[0] != text_block_hashes(text, 16)[0]


def test_chains_share_exactly_the_common_blocks() -> None:
    a = text_block_hashes(render_chat([SYSTEM, {"role": "user", "content": "one " * 50}]), 64)
    b = text_block_hashes(render_chat([SYSTEM, {"role": "user", "content": "two " * 50}]), 64)
    common = len(render_chat([SYSTEM])) // 64
    assert a[:common] == b[:common] and a[common + 1:] != b[common + 1:]
    assert len(text_block_hashes("x" * 10_000, 64, max_blocks=8)) == 8


def test_hashes_are_stable_across_processes_and_fit_63_bits() -> None:
    # Pinned: another process, machine or replica must compute the same values.
    assert text_block_hashes("a" * 256)[0] == text_block_hashes("a" * 256)[0]
    assert text_block_hashes("abcd", 4) == [text_block_hashes("abcdxyz", 4)[0]]
    assert key_hash("tenant-7") == key_hash("tenant-7") < 1 << 63
    assert text_block_hashes("abcd", 4) == [8669830124310315718]


def test_token_keys_chain_through_the_parent() -> None:
    ids = list(range(100))
    whole = token_block_keys(ids, 16)
    assert len(whole) == 6
    assert token_block_keys(ids[16:32], 16, parent=whole[0]) == [whole[1]]
    assert token_block_keys(ids, 16, max_blocks=2) == whole[:2]


def test_completions_prompts_render_as_text() -> None:
    assert render_body("completions", {"prompt": "hello"}) == "hello"
    assert render_body("completions", {"prompt": ["first", "second"]}) == "first"
    assert render_body("completions", {"prompt": [1, 2, 3]}) == "1 2 3"
    assert render_body("chat", {"messages": "not a list"}) == ""
