"""The engines' tokenizer as the router uses it: prompt → token ids, the way the engine counts.

``tokenizers`` (Hugging Face's Rust tokenizer) loads the model's own tokenizer.json; a chat
is rendered with the model's chat template when one sits beside it (tokenizer_config.json)
and jinja2 is installed, else as ``role: content`` lines (then only completions prompts
match the engine's blocks exactly). Loading is explicit and cached per path by the caller.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from shared.prefix import text_of


class TokenizerError(Exception):
    """The tokenizer file cannot be loaded."""


class PromptTokenizer(Protocol):
    """Token ids of a request's prompt as the engine would compute them."""

    def completion(self, prompt: str) -> list[int]: ...

    def chat(self, messages: Sequence[dict[str, Any]]) -> list[int]: ...


class HFTokenizer:
    """A tokenizer.json (and its chat template, if any) loaded with ``tokenizers``."""

    def __init__(self, path: str) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as err:  # pragma: no cover - a declared dependency
            raise TokenizerError(f"the tokenizers package is missing: {err}") from None
        file = Path(path)
        if file.is_dir():
            file = file / "tokenizer.json"
        try:
            self._tok = Tokenizer.from_file(str(file))
        except Exception as err:  # tokenizers raises plain Exceptions
            raise TokenizerError(f"cannot load tokenizer {file}: {err}") from None
        self._template = _chat_template(file.parent / "tokenizer_config.json")

    def completion(self, prompt: str) -> list[int]:
        return list(self._tok.encode(prompt, add_special_tokens=True).ids)

    def chat(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        if self._template is not None:
            text = self._template(messages)
            return list(self._tok.encode(text, add_special_tokens=False).ids)
        text = "".join(f"{m.get('role', '')}: {text_of(m.get('content'))}\n" for m in messages)
        return list(self._tok.encode(text, add_special_tokens=True).ids)


def _chat_template(config: Path) -> Callable[[Sequence[dict[str, Any]]], str] | None:
    try:
        data = json.loads(config.read_text())
        source = data.get("chat_template")
        if not isinstance(source, str):
            return None
        import jinja2
    except (OSError, ValueError, ImportError):
        return None
    template = jinja2.Environment(autoescape=False).from_string(source)
    bos, eos = data.get("bos_token", ""), data.get("eos_token", "")

    def render(messages: Sequence[dict[str, Any]]) -> str:
        return template.render(messages=list(messages), add_generation_prompt=True,
                               bos_token=bos if isinstance(bos, str) else "",
                               eos_token=eos if isinstance(eos, str) else "")
    return render
