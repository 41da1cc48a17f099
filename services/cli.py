"""The ``llmsched`` console script: one subcommand per service, plus ``up``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from shared.config import ConfigError, LoadedConfig, load_config

SERVICES = ("api", "scheduler", "collector", "autoscaler")


def build_parser() -> argparse.ArgumentParser:
    """The whole command-line contract (SPEC: command line)."""
    parser = argparse.ArgumentParser(
        prog="llmsched",
        description="Metrics-driven scheduler for vLLM/SGLang fleets behind F5 or any gateway.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="run the whole system (embedded NATS/Valkey, demo fleet)")
    up.add_argument("--config", help="config file (default: the embedded demo config)")
    up.add_argument("--run-dir", default=".llmsched",
                    help="where the demo writes its config and logs (default: ./.llmsched)")
    up.add_argument("--api-port", type=int, default=None,
                    help="API port for the embedded demo config (default 8080)")
    up.add_argument("--schedulers", type=int, default=2, help="scheduler replicas (default 2)")
    for name in SERVICES:
        p = sub.add_parser(name, help=f"run the {name} service (NATS_URL/REDIS_URL from env)")
        p.add_argument("--config", required=True, help="config file (YAML, hot-reloaded)")
    sim = sub.add_parser("engine-sim", help="simulated vLLM/SGLang engine(s)", add_help=False)
    sim.add_argument("args", nargs=argparse.REMAINDER)
    worker = sub.add_parser("worker", help="worker agent: runs this host's engine instances",
                            add_help=False)
    worker.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _load(path: str) -> LoadedConfig:
    try:
        return load_config(path)
    except ConfigError as err:
        print(f"llmsched: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _service_main(name: str) -> Callable[[LoadedConfig], int]:
    if name == "api":
        from services.api.main import run
    elif name == "scheduler":
        from services.scheduler.main import run
    elif name == "collector":
        from services.collector.main import run
    else:
        from services.autoscaler.main import run
    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llmsched`` console script."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "engine-sim":
        from services.enginesim.cli import main as sim_main

        return int(sim_main(args_list[1:]))
    if args_list and args_list[0] == "worker":
        from services.worker.main import main as worker_main

        return int(worker_main(args_list[1:]))
    args = build_parser().parse_args(args_list)
    if args.command == "up":
        from services.up import run_up

        return run_up(config=args.config, run_dir=args.run_dir, api_port=args.api_port,
                      schedulers=args.schedulers)
    loaded = _load(args.config)
    return _service_main(args.command)(loaded)


if __name__ == "__main__":
    raise SystemExit(main())
