"""Loading a config: read the YAML, substitute ``${NAME}``, find every problem, build.

Problems come from four places, all gathered before any is reported: the document
(YAML syntax, duplicate keys), the substitution (a variable not set), the JSON Schema
(``schemas/config.schema.json``: types, enums, required and unknown keys) and the table
(each key's kind, then each section's rules). Where two find a problem at one path, the
first is reported; all are reported in the order of the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import jsonschema

from agent.config.document import kind_of, read_yaml, substitute_env
from agent.config.keys import TABLE
from agent.config.model import Config
from agent.config.rules import warnings
from agent.config.schema import schema_problems
from agent.config.table import Table
from agent.errors import ConfigError, Problem
from agent.schemas import python_validator


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read, check and build the config at ``path``; ``env`` defaults to ``os.environ``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([Problem("", f"cannot read {path}: {exc.strerror or exc}")]) from exc
    except UnicodeDecodeError as exc:
        problem = Problem("", f"{path} is not UTF-8 text (byte {exc.start})")
        raise ConfigError([problem]) from exc
    return parse_config(text, os.environ if env is None else env, source=str(path))


def parse_config(text: str, env: Mapping[str, str], *, source: str = "<config>") -> Config:
    """Check and build a config from YAML text; raises ConfigError with every problem."""
    config: Config = parse_with(TABLE, python_validator("config"), text, env, source)
    return config


def parse_with(
    table: Table,
    validator: jsonschema.protocols.Validator,
    text: str,
    env: Mapping[str, str],
    source: str,
) -> Config:
    """``parse_config`` with a table and the validator of its schema."""
    document = read_yaml(text, source)
    substituted = substitute_env(document.data, env)
    data = substituted.data
    if not isinstance(data, dict):
        what = "is empty" if data is None else f"must be a mapping of settings, not {kind_of(data)}"
        raise ConfigError([Problem("", f"{source} {what}")])
    problems = document.problems + substituted.problems
    problems += schema_problems(validator, data, substituted.touched, table.holds_secret)
    table.root.check((), data, problems)
    if problems:
        raise ConfigError(document.in_file_order(problems))
    config: Config = table.root.build(data)
    return replace(config, warnings=warnings(config))
