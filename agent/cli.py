"""The command line: argument parsing and exit codes only (CONTRACT §2)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from agent import __version__
from agent.errors import ConfigError, StateError, TailhookError

DEFAULT_CONFIG = "/etc/tailhook/config.yaml"
EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def default_config_path() -> str:
    return os.environ.get("TAILHOOK_CONFIG") or DEFAULT_CONFIG


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailhook",
        description="Tail WAF detection logs and deliver them to webhooks, at least once.",
    )
    parser.add_argument("--version", action="version", version=f"tailhook {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument(
            "-c",
            "--config",
            default=None,
            help=f"config file (default: $TAILHOOK_CONFIG, then {DEFAULT_CONFIG})",
        )
        return sub

    with_config(commands.add_parser("run", help="run the agent until SIGTERM/SIGINT"))
    with_config(commands.add_parser("check-config", help="validate the config and exit"))
    validate = commands.add_parser("validate", help="check detection log lines offline")
    validate.add_argument("--format", choices=["native", "modsecurity"], default="native")
    validate.add_argument("files", nargs="+", metavar="FILE")
    test = with_config(commands.add_parser("test-webhook", help="send test notifications"))
    test.add_argument("webhook", metavar="NAME")
    demo = commands.add_parser("demo", help="a self-contained demo on loopback")
    demo.add_argument(
        "--linger",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep the demo agent (and its metrics) up this long at the end",
    )
    dead = commands.add_parser("dead-letter", help="list or replay dead-lettered batches")
    dead_commands = dead.add_subparsers(dest="dead_command", required=True, metavar="ACTION")
    listing = with_config(dead_commands.add_parser("list", help="list dead-lettered batches"))
    listing.add_argument("webhook", nargs="?", metavar="WEBHOOK")
    replay = with_config(dead_commands.add_parser("replay", help="queue them for delivery again"))
    replay.add_argument("webhook", metavar="WEBHOOK")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(str(problem), file=sys.stderr)
        return EXIT_INVALID
    except StateError as exc:
        print(f"tailhook: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except TailhookError as exc:
        print(f"tailhook: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _dispatch(args: argparse.Namespace) -> int:
    from agent import commands

    config_path = Path(getattr(args, "config", None) or default_config_path())
    if args.command == "run":
        return commands.run(config_path)
    if args.command == "check-config":
        return commands.check_config(config_path)
    if args.command == "validate":
        return commands.validate(args.files, args.format)
    if args.command == "test-webhook":
        return commands.test_webhook(config_path, args.webhook)
    if args.command == "demo":
        from agent.demo import run_demo

        return run_demo(linger=args.linger)
    if args.dead_command == "list":
        return commands.dead_letter_list(config_path, args.webhook)
    return commands.dead_letter_replay(config_path, args.webhook)
