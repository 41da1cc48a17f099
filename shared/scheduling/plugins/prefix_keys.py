"""What a request brings to cache-aware routing: its prefix blocks, and what each member holds."""

from __future__ import annotations

from dataclasses import dataclass, field

WARM_SHARE = 0.3
"""A member is warm for a request when it holds this share of the prompt (the peers'
``cache_threshold``); a prompt nobody is warm for is cold."""


@dataclass(slots=True)
class RequestKeys:
    """One request's prefix and session, and (filled in before scoring) its cached tokens."""

    prefix_hashes: list[int] = field(default_factory=list)
    """Approximate blocks (rendered prompt, fixed-size character blocks), chained."""
    token_keys: list[int] = field(default_factory=list)
    """Precise blocks (the engine's tokens, its KV block size), chained."""
    session: str = ""
    cached_tokens: dict[str, float] = field(default_factory=dict)
    """Member key → prompt tokens it is believed to hold already (members holding none are
    absent)."""

    def uncached(self, member: str, prompt_tokens: float) -> float:
        """Prompt tokens ``member`` would have to compute."""
        return max(0.0, prompt_tokens - self.cached_tokens.get(member, 0.0))

    def fraction(self, member: str, prompt_tokens: float) -> float:
        """Share of the prompt ``member`` holds, 0..1."""
        if prompt_tokens <= 0:
            return 1.0 if self.cached_tokens.get(member) else 0.0
        return min(1.0, self.cached_tokens.get(member, 0.0) / prompt_tokens)

    def warm(self, member: str, prompt_tokens: float) -> bool:
        """``member`` holds at least ``WARM_SHARE`` of the prompt."""
        return self.fraction(member, prompt_tokens) >= WARM_SHARE
