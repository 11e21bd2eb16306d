"""``tailhook completion``: the bash and zsh completion scripts, and the webhook names
they complete.

The scripts are package data (``agent/completions/tailhook.bash`` and ``_tailhook``),
so every install carries them, a wheel in ``/opt/tailhook`` or an image alike, and
``tailhook completion bash|zsh`` prints the one that matches the installed version,
to be written where the shell looks (README, Commands).

``tailhook completion webhooks [-c PATH]`` prints the config's webhook names, one a
line: the scripts call it for ``test-webhook`` and ``dead-letter`` (and discard its
stderr). It reads the YAML's node graph and nothing more: no ``${NAME}`` substitution
(the secrets live in the service's environment, not the operator's shell), no check of
the rest of the file (``check-config`` does that), no alias expanded; it does not import
the agent, so a TAB costs one interpreter start (~0.15 s).
"""

from __future__ import annotations

import re
import sys
from importlib.resources import files
from pathlib import Path

import yaml

from agent.errors import ConfigError, Problem

SCRIPTS = {"bash": "tailhook.bash", "zsh": "_tailhook"}
#: What a webhook name may be (``agent.config.kinds.Name``, which a test holds this to);
#: anything else would not be a configured webhook, and could break a line in two.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_STR = "tag:yaml.org,2002:str"


def print_completion(what: str, config_path: Path) -> int:
    """``tailhook completion bash|zsh|webhooks``."""
    if what == "webhooks":
        for name in webhook_names(config_path):
            print(name)
    else:
        sys.stdout.write(completion_script(what))
    return 0


def completion_script(shell: str) -> str:
    return (files("agent") / "completions" / SCRIPTS[shell]).read_text(encoding="utf-8")


def webhook_names(config_path: Path) -> list[str]:
    """The names under ``webhooks:`` in the config's YAML, in order; a file that cannot
    be read or is not YAML is a ConfigError."""
    try:
        text = config_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem("", f"cannot read {config_path}: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem("", f"{config_path} is not UTF-8 text")]) from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError([Problem("", f"{config_path}: invalid YAML")]) from exc
    hooks = _lookup(root, "webhooks")
    if not isinstance(hooks, yaml.SequenceNode):
        return []
    names = []
    for hook in hooks.value:
        name = _lookup(hook, "name")
        if isinstance(name, yaml.ScalarNode) and name.tag == _STR and NAME.fullmatch(name.value):
            names.append(name.value)
    return names


def _lookup(node: yaml.Node | None, key: str) -> yaml.Node | None:
    """The value of ``key`` in a mapping node (the last one, as YAML loaders take it)."""
    if not isinstance(node, yaml.MappingNode):
        return None
    found = None
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            found = value_node
    return found
