"""The demo fleet of ``llmsched up``: its config, its engines and the commands to try."""

from __future__ import annotations

import json
import sys
import urllib.request
from typing import Any

from shared.auth import bearer

DEMO_POOL = "demo-pool"
DEMO_PARTITION = "Common"
DEMO_F5_PASSWORD_ENV = "LLMSCHED_DEMO_F5_PASSWORD"
DEMO_MODEL = "demo-model"
DEMO_SPEEDS = (0.5, 1.0, 2.0)
DEMO_SCALING = {"min_replicas": 1, "max_replicas": 3, "scale_interval_s": 5,
                "down_after_s": 15, "drain_timeout_s": 10}
DEMO_ALIASES: list[dict[str, Any]] = [
    # The seed's fake model: no weights, a fixed answer after a delay, 2 at a time.
    {"alias": "fake-model", "model_name": "__fake__", "fake": True, "fake_response": "FAKE_OK",
     "fake_delay_ms": 1500, "fake_capacity": 2, "autoscaling": DEMO_SCALING},
    # A simulated vLLM engine (a queueing model of an 8B model on one GPU).
    {"alias": "chat", "model_name": "llama-3.1-8b-sim", "engine": "vllm", "max_num_seqs": 4,
     "autoscaling": DEMO_SCALING},
]

DEMO_HEADER = """\
# llmsched demo config, written by `llmsched up` on its first run and kept from then on:
# edit it freely. Changes apply within global.interval seconds (try
# pools[0].fallback.pool_fallback: true). `llmsched up --reset-config` writes a fresh one
# and keeps this one as a backup.
# f5.port is where `llmsched up` starts its F5 emulator. The API listens on 8080, or on a
# free port when 8080 is busy; set global.api_port to pin it (up then fails if it is busy).
"""


def demo_config(f5_port: int) -> dict[str, Any]:
    """The embedded default: one F5 pool of three simulated engines."""
    return {
        "global": {"interval": 2, "api_host": "127.0.0.1", "log_level": "INFO",
                   "select_timeout_ms": 250},
        "f5": {"host": "127.0.0.1", "port": f5_port, "scheme": "http", "verify": False,
               "username": "admin", "password_env": DEMO_F5_PASSWORD_ENV},
        "scheduler": {"pool_fetch_interval": 5, "metrics_fetch_interval": 1000},
        "modes": [{"name": "s1", "w_a": 0.8, "w_b": 0.2}],
        "pools": [{
            "name": DEMO_POOL, "partition": DEMO_PARTITION, "engine_type": "vllm",
            "metrics": {"schema": "http", "path": "/metrics", "timeout": 2},
            "fallback": {"pool_fallback": False, "member_running_req_threshold": 20.0,
                         "member_waiting_queue_threshold": 15.0},
        }],
    }


def start_demo_instances(worker: str, ports: list[int], admin_key: str | None, *,
                         only: set[int] | None = None, add_replica: bool = False) -> list[str]:
    """Three simulated vLLM engines of mixed speeds on fixed ports, started by the worker
    (``only``: just those of these ports, each as an added replica of the alias)."""
    urls: list[str] = []
    for i, (speed, port) in enumerate(zip(DEMO_SPEEDS, ports, strict=True)):
        if only is not None and port not in only:
            continue
        spec = {"alias": DEMO_MODEL, "model_name": "llama-3.1-8b-sim", "engine": "vllm",
                "engine_backend": "sim", "max_num_seqs": 8, "speed": speed,
                "add_replica": add_replica or i > 0, "port": port}
        request = urllib.request.Request(
            f"{worker}/instances/start", data=json.dumps(spec).encode(), method="POST",
            headers={"content-type": "application/json", **bearer(admin_key)})
        with urllib.request.urlopen(request, timeout=60) as resp:
            urls.append(str(json.loads(resp.read())["url"]).rstrip("/"))
    return urls


def instance_ports(worker: str, admin_key: str | None) -> set[int]:
    """The ports of the instances the worker runs now."""
    request = urllib.request.Request(f"{worker}/instances", headers=bearer(admin_key))
    with urllib.request.urlopen(request, timeout=30) as resp:
        return {int(i["port"]) for i in json.loads(resp.read())["instances"]}


def try_lines(api: str, members: list[str], load_control: str, admin_key_env: str | None
              ) -> list[str]:
    """Ready-to-paste commands against the demo."""
    body = json.dumps({"pool_name": DEMO_POOL, "partition": DEMO_PARTITION, "members": members})
    auth = f" -H \"Authorization: Bearer ${admin_key_env}\"" if admin_key_env else ""
    pool = f"{api}/pools/{DEMO_POOL}/{DEMO_PARTITION}"
    return [
        "Try:",
        f"  curl -s -X POST {api}/scheduler/select -H 'content-type: application/json' "
        f"-d '{body}'",
        f"  curl -s -X POST '{pool}/analyze?iterations=1000' "
        f"-H 'content-type: application/json' -d '{body}'",
        f"  curl -s {pool}/status",
        "  # pile requests onto engine 1 (its waiting queue rises, its share drops):",
        f"  curl -s -X PUT {load_control} "
        "-H 'content-type: application/json' -d '{\"target\": 0, \"concurrency\": 40}'",
        "  # back to the automatic wave: -d '{\"target\": 0, \"auto\": true}'",
        f"  curl -s {api}/admin/workers{auth}",
    ]


def register_aliases(api: str, admin_key: str | None) -> list[str]:
    """Register the demo's aliases (again: registration is idempotent); their names."""
    for body in DEMO_ALIASES:
        request = urllib.request.Request(
            f"{api}/admin/models/register", data=json.dumps(body).encode(), method="POST",
            headers={"content-type": "application/json", **bearer(admin_key)})
        with urllib.request.urlopen(request, timeout=30) as resp:
            resp.read()
    return [str(body["alias"]) for body in DEMO_ALIASES]


def gateway_lines(api: str, aliases: list[str], admin_key_env: str | None) -> list[str]:
    """The OpenAI SDK against the gateway, ready to paste (this interpreter has openai)."""
    auth = f" -H \"Authorization: Bearer ${admin_key_env}\"" if admin_key_env else ""
    return [
        "OpenAI gateway (aliases " + ", ".join(aliases) + "; the autoscaler follows the demo "
        "wave):",
        f"  {sys.executable} - <<'EOF'",
        "from openai import OpenAI",
        f'client = OpenAI(base_url="{api}/v1", api_key="unused")',
        "print([m.id for m in client.models.list()])",
        'r = client.chat.completions.create(model="chat", max_tokens=32,',
        '                                   messages=[{"role": "user", "content": "Hello!"}])',
        "print(r.choices[0].message.content)",
        "EOF",
        f"  curl -s {api}/admin/status{auth}   # instances by state, load, autoscaler actions",
    ]
