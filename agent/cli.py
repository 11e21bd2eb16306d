"""The command line: argument parsing and exit codes only (CONTRACT §2).

Every command's ``--help`` ends with an example (``EXAMPLES``). A closed pipe on stdout
(``tailhook validate --print x.log | head``) ends the command quietly with 141, the
status a shell shows for a tool that SIGPIPE stopped.
"""

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
EXIT_BROKEN_PIPE = 128 + 13

#: The example at the end of each command's help, by command ("" is tailhook itself).
EXAMPLES = {
    "": """\
examples:
  tailhook check-config -c /etc/tailhook/config.yaml
  tailhook run -c /etc/tailhook/config.yaml
  tailhook validate --print /var/log/wallarm/detections.log | jq .
  tailhook COMMAND --help     # each command's options, with an example""",
    "run": """\
example:
  tailhook run -c /etc/tailhook/config.yaml     # until SIGTERM or Ctrl-C; SIGHUP reloads""",
    "check-config": """\
example:
  tailhook check-config -c /etc/tailhook/config.yaml && systemctl reload tailhook""",
    "validate": """\
examples:
  tailhook validate /var/log/wallarm/detections.log
  tailhook validate --format modsecurity /var/log/nginx/modsec_audit.log
  tail -n 100 detections.log | tailhook validate --print - | jq .object_type

Without --print, the reports (FILE:LINE: reason) and the summary go to stdout; with
--print, stdout has only the notification objects, one JSON object a line, and the
reports and the summary go to stderr.""",
    "test-webhook": """\
example:
  tailhook test-webhook -c /etc/tailhook/config.yaml soc     # prints "soc: HTTP 200" """,
    "demo": """\
example:
  tailhook demo --linger 60     # then: curl http://127.0.0.1:PORT/metrics""",
    "dead-letter": """\
examples:
  tailhook dead-letter list -c /etc/tailhook/config.yaml
  tailhook dead-letter replay -c /etc/tailhook/config.yaml soc""",
    "list": """\
examples:
  tailhook dead-letter list soc
  tailhook dead-letter list --show msg_2f1c0d9e7a4b4c55a0b8e3f6d1c2b3a4 soc
  tailhook dead-letter list --json | jq -r '.events[].object_type'

Each line: time, webhook, batch id, reason, HTTP status, number of events. --show prints
that batch's answer (its first KiB, header values redacted) and events; --json prints each
batch as stored, one JSON object a line.""",
    "replay": """\
example:
  tailhook dead-letter replay -c /etc/tailhook/config.yaml soc     # after fixing soc""",
    "completion": """\
examples:
  tailhook completion bash > /usr/share/bash-completion/completions/tailhook
  tailhook completion zsh > /usr/share/zsh/vendor-completions/_tailhook
  tailhook completion webhooks -c /etc/tailhook/config.yaml     # the names it completes""",
}


def default_config_path() -> str:
    return os.environ.get("TAILHOOK_CONFIG") or DEFAULT_CONFIG


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    *,
    config: bool = False,
) -> argparse.ArgumentParser:
    """A sub-command with its example; ``config``: it takes ``-c``."""
    sub = commands.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog=EXAMPLES[name],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if config:
        sub.add_argument(
            "-c",
            "--config",
            default=None,
            help=f"config file (default: $TAILHOOK_CONFIG, then {DEFAULT_CONFIG})",
        )
    return sub


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailhook",
        description="Tail WAF detection logs and deliver them to webhooks, at least once.",
        epilog=EXAMPLES[""],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tailhook {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _command(commands, "run", "run the agent until SIGTERM/SIGINT", config=True)
    _command(commands, "check-config", "validate the config and exit", config=True)
    validate = _command(commands, "validate", "check detection log lines offline")
    validate.add_argument(
        "--format",
        choices=["native", "modsecurity"],
        default="native",
        help="how the lines are written (default: native)",
    )
    validate.add_argument(
        "--print",
        action="store_true",
        help="write each valid line's notification object to stdout (a dry run of the mapping)",
    )
    validate.add_argument("files", nargs="+", metavar="FILE", help="a log file; - reads stdin")
    test = _command(commands, "test-webhook", "send test notifications", config=True)
    test.add_argument("webhook", metavar="NAME", help="a webhook of the config")
    demo = _command(commands, "demo", "a self-contained demo on loopback")
    demo.add_argument(
        "--linger",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep the demo agent (and its metrics) up this long at the end",
    )
    _dead_letter_commands(_command(commands, "dead-letter", "list or replay dead-lettered batches"))
    completion = _command(commands, "completion", "print a shell completion script", config=True)
    completion.add_argument(
        "shell",
        choices=["bash", "zsh", "webhooks"],
        help="bash or zsh: the script; webhooks: the config's webhook names, one a line",
    )
    return parser


def _dead_letter_commands(dead: argparse.ArgumentParser) -> None:
    actions = dead.add_subparsers(dest="dead_command", required=True, metavar="ACTION")
    listing = _command(actions, "list", "list dead-lettered batches", config=True)
    listing.add_argument(
        "webhook", nargs="?", metavar="WEBHOOK", help="a webhook of the config (default: each)"
    )
    listing.add_argument("--json", action="store_true", help="each batch as stored, as JSON")
    listing.add_argument(
        "--show", metavar="ID", help="the batch with this id: its answer and its events"
    )
    replay = _command(actions, "replay", "queue them for delivery again", config=True)
    replay.add_argument("webhook", metavar="WEBHOOK", help="a webhook of the config")


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
    except BrokenPipeError:
        # The reader went away: what is still buffered can never be written, and Python
        # would report that at exit. Point stdout at /dev/null and stop.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _dispatch(args: argparse.Namespace) -> int:
    config_path = Path(getattr(args, "config", None) or default_config_path())
    if args.command == "completion":  # first, and without the agent's imports: it is on TAB
        from agent.completion import print_completion

        return print_completion(args.shell, config_path)
    if args.command == "validate":
        from agent.validate import validate

        return validate(args.files, args.format, print_notifications=args.print)
    if args.command == "demo":
        from agent.demo import run_demo

        return run_demo(linger=args.linger)
    from agent import commands

    if args.command == "run":
        return commands.run(config_path)
    if args.command == "check-config":
        return commands.check_config(config_path)
    if args.command == "test-webhook":
        return commands.test_webhook(config_path, args.webhook)
    if args.dead_command == "list":
        return commands.dead_letter_list(config_path, args.webhook, args.json, args.show)
    return commands.dead_letter_replay(config_path, args.webhook)
