"""Loading a config: read the YAML, substitute ``${NAME}``, find every problem, build.

Problems come from four places, all gathered before any is reported: the document
(YAML syntax, duplicate keys), the substitution (a variable not set), the JSON Schema
(``schemas/config.schema.json``: types, enums, required and unknown keys; a compiled
validator gives the verdict, and only an invalid config is walked again for its errors)
and the table (each key's kind, then each section's rules). Where two find a problem at
one path, the first is reported; all are reported in the order of the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from agent.config.document import Loc, Located, kind_of, read_yaml, substitute_env
from agent.config.keys import TABLE
from agent.config.model import Config
from agent.config.rules import warnings
from agent.config.schema import schema_problems
from agent.config.table import Table
from agent.errors import ConfigError, Problem
from agent.schemas import fast_validator, python_validator


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
    return parse_with(TABLE, _config_validators(), text, env, source)


@dataclass(frozen=True)
class Validators:
    """Two validators of one schema: ``quick`` (jsonschema_rs, compiled) gives the
    verdict, ``full`` (jsonschema) every error with its path, only when there is one.
    2,000 webhooks: 14 ms and 1.2 s. A test holds them to the same verdicts."""

    full: jsonschema.protocols.Validator
    quick: Any

    def problems(self, data: Any, touched: set[Loc], table: Table) -> list[Located]:
        if self._valid(data):
            return []
        return schema_problems(self.full, data, touched, table.holds_secret)

    def _valid(self, data: Any) -> bool:
        try:
            return bool(self.quick.is_valid(data))
        except ValueError:  # a value JSON cannot hold (a YAML date, set, binary): not valid
            return False


@cache
def _config_validators() -> Validators:
    return Validators(python_validator("config"), fast_validator("config"))


def parse_with(
    table: Table, validators: Validators, text: str, env: Mapping[str, str], source: str
) -> Config:
    """``parse_config`` with a table and the validators of its schema."""
    document = read_yaml(text, source)
    substituted = substitute_env(document.data, env)
    data = substituted.data
    if not isinstance(data, dict):
        what = "is empty" if data is None else f"must be a mapping of settings, not {kind_of(data)}"
        raise ConfigError([Problem("", f"{source} {what}")])
    problems = document.problems + substituted.problems
    problems += validators.problems(data, substituted.touched, table)
    table.root.check((), data, problems)
    if problems:
        raise ConfigError(document.in_file_order(problems))
    config: Config = table.root.build(data)
    return replace(config, warnings=warnings(config))
