"""The ``llmsched`` console script: one subcommand per service, plus ``up``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from shared.config import ConfigError, GlobalConfig, LoadedConfig, load_config

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
                    help="demo config, logs and pids.json (default: ./.llmsched)")
    up.add_argument("--api-port", type=_port, default=None,
                    help="API port; up fails (exit 2) if it is busy. Default: global.api_port "
                    "if the config names it, else 8080, or a free port when 8080 is busy")
    up.add_argument("--schedulers", type=_count, default=2, help="scheduler replicas (default 2)")
    up.add_argument("--api-processes", type=_count, default=2,
                    help="API processes sharing one listening socket (default 2)")
    up.add_argument("--reset-config", action="store_true",
                    help="write a fresh demo config (the old file is backed up first)")
    # Only what "the default port" is, so tests can exercise moving off it without 8080.
    up.add_argument("--default-api-port", type=_port, default=GlobalConfig().api_port,
                    help=argparse.SUPPRESS)
    for name in SERVICES:
        p = sub.add_parser(name, help=f"run the {name} service (NATS_URL/REDIS_URL from env)")
        p.add_argument("--config", required=True, help="config file (YAML, hot-reloaded)")
        if name == "api":
            # Set by `llmsched up`: serve on an inherited listening socket instead of binding.
            p.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)
    sim = sub.add_parser("engine-sim", help="simulated vLLM/SGLang engine(s)", add_help=False)
    sim.add_argument("args", nargs=argparse.REMAINDER)
    worker = sub.add_parser("worker", help="worker agent: runs this host's engine instances",
                            add_help=False)
    worker.add_argument("args", nargs=argparse.REMAINDER)
    pd = sub.add_parser("pd", help="prefill/decode router over the seed's JSON config "
                        "(embedded NATS/Valkey)", add_help=False)
    pd.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _port(text: str) -> int:
    port = _int(text)
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"must be a TCP port 1..65535, got {port}")
    return port


def _count(text: str) -> int:
    count = _int(text)
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {count}")
    return count


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _load(path: str) -> LoadedConfig:
    try:
        return load_config(path)
    except ConfigError as err:
        print(f"llmsched: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _service_main(name: str) -> Callable[[LoadedConfig], int]:
    if name == "scheduler":
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
    if args_list and args_list[0] == "pd":
        from services.pd.main import main as pd_main

        return int(pd_main(args_list[1:]))
    if args_list and args_list[0] == "worker":
        from services.worker.main import main as worker_main

        return int(worker_main(args_list[1:]))
    parser = build_parser()
    args = parser.parse_args(args_list)
    if args.command == "up":
        from services.up import UpOptions, run_up

        if args.reset_config and args.config is not None:
            parser.error("--reset-config applies to the demo config only, not to --config")
        return run_up(UpOptions(config=args.config, run_dir=args.run_dir,
                                api_port=args.api_port, schedulers=args.schedulers,
                                api_processes=args.api_processes,
                                reset_config=args.reset_config,
                                default_api_port=args.default_api_port))
    loaded = _load(args.config)
    if args.command == "api":
        from services.api.main import run as run_api

        return run_api(loaded, listen_fd=args.listen_fd)
    return _service_main(args.command)(loaded)


if __name__ == "__main__":
    raise SystemExit(main())
