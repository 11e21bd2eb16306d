"""The config file as a document, before it becomes dataclasses.

Owns what knows about YAML text and about paths in it: reading YAML safely (a syntax
error is one problem with its line and column; a duplicate key is a problem at its path;
an alias bomb is refused before it is expanded), ``${NAME}`` substitution from the
environment, and reporting problems in the order of the file.

A location (``Loc``) is a tuple of keys and list indexes: ``("webhooks", 1, "url")``;
a problem (``Located``) is a location and a message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from agent.errors import ConfigError, Problem

Loc = tuple[str | int, ...]
Located = tuple[Loc, str]

_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: Values a config may hold once YAML aliases are expanded. Measured: 2,000 webhooks with
#: every setting (headers, tls, batch, retry, signing, filter) and 20 sources hold 146,405
#: (1.2 MB of YAML); an alias bomb of a few hundred bytes holds billions.
MAX_EXPANDED_NODES = 500_000


def format_path(loc: Loc) -> str:
    """``("webhooks", 1, "url")`` -> ``webhooks[1].url``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def kind_of(value: object) -> str:
    """What a YAML value is, in words, without saying what it holds."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


@dataclass
class Document:
    """A parsed YAML document: its data, the line of each key and item, its problems."""

    data: Any
    positions: dict[Loc, tuple[int, int]] = field(default_factory=dict)  # (line, column)
    problems: list[Located] = field(default_factory=list)

    def position_of(self, loc: Loc) -> tuple[int, int]:
        """Where ``loc`` is written, or its nearest ancestor present in the file."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.positions:
                return self.positions[loc[:end]]
        return (0, 0)

    def in_file_order(self, problems: Iterable[Located]) -> list[Problem]:
        """Problems sorted by position (stable), each location reported once: the first wins."""
        seen: set[Loc] = set()
        unique = []
        for loc, message in problems:
            if loc not in seen:
                seen.add(loc)
                unique.append((loc, message))
        unique.sort(key=lambda item: self.position_of(item[0]))
        return [Problem(format_path(loc), message) for loc, message in unique]


def read_yaml(text: str, source: str) -> Document:
    """Parse YAML with the safe loader; a syntax error raises ConfigError with its position.

    A document that aliases would multiply past ``MAX_EXPANDED_NODES`` values (a
    "billion laughs") is refused from its node graph, in time linear in its text,
    before anything is built from it.
    """
    loader = None
    document = Document(None, {(): (1, 1)})
    try:
        loader = yaml.SafeLoader(text)  # checks the characters first: may raise ReaderError
        node = loader.get_single_node()
        if node is not None:
            _check_expansion(node, source)
            # Walked before it is built: building merges ``<<`` keys into the mappings.
            _walk(node, (), document, set())
            document.data = loader.construct_document(node)
    except RecursionError as exc:
        raise ConfigError([Problem("", f"{source}: nested too deeply")]) from exc
    except yaml.MarkedYAMLError as exc:
        raise ConfigError([Problem("", _syntax_message(exc, source))]) from exc
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        message = f"{source}: invalid YAML at line {line}: {exc.reason}"
        raise ConfigError([Problem("", message)]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([Problem("", f"{source}: invalid YAML")]) from exc
    finally:
        if loader is not None:
            loader.dispose()
    return document


def expanded_size(root: yaml.Node, limit: int) -> int:
    """How many values (scalars, lists, mappings, keys included) the document holds once
    every alias and merge is expanded, counted on the node graph with each node's size
    worked out once: linear time and memory. Sizes stop growing at ``limit + 1``; a
    node inside itself (a recursive alias) counts once."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # entered, children not all counted: the current path
    stack = [root]
    while stack:
        node = stack[-1]
        key = id(node)
        if key in sizes:
            stack.pop()
            continue
        if isinstance(node, yaml.ScalarNode):  # most nodes: no children to visit
            sizes[key] = 1
            stack.pop()
            continue
        children = _children(node)
        if key not in open_nodes:
            open_nodes.add(key)
            stack.extend(c for c in children if id(c) not in sizes and id(c) not in open_nodes)
            continue
        total = 1 + sum(sizes.get(id(child), 1) for child in children)
        sizes[key] = min(total, limit + 1)
        open_nodes.discard(key)
        stack.pop()
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(node: yaml.Node, source: str) -> None:
    size = expanded_size(node, MAX_EXPANDED_NODES)
    if size > MAX_EXPANDED_NODES:
        message = (
            f"{source}: its aliases expand it to more than {MAX_EXPANDED_NODES} values;"
            " refusing to read it (an alias bomb?)"
        )
        raise ConfigError([Problem("", message)])


def _syntax_message(exc: yaml.MarkedYAMLError, source: str) -> str:
    # Only yaml's own words and the position: str(exc) would quote the offending line,
    # which may hold a secret.
    mark = exc.problem_mark or exc.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    what = exc.problem or "syntax error"
    if exc.context:
        what += f" ({exc.context})"
    return f"{source}: invalid YAML{where}: {what}"


def _walk(node: yaml.Node, loc: Loc, document: Document, seen: set[int]) -> None:
    """Record where every key and list item is written; report keys given twice."""
    if id(node) in seen:  # an alias: walked where its anchor is
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            key = str(key_node.value)
            child = (*loc, key)
            if key in first_line:
                message = f"duplicate key (first given at line {first_line[key]})"
                document.problems.append((child, message))
            else:
                first_line[key] = key_node.start_mark.line + 1
                document.positions[child] = _position(key_node)
            _walk(value_node, child, document, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            document.positions[(*loc, index)] = _position(item)
            _walk(item, (*loc, index), document, seen)


def _position(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


@dataclass
class Substituted:
    """The data after ``${NAME}`` substitution, its problems, and where it substituted."""

    data: Any
    problems: list[Located]
    touched: set[Loc]


def substitute_env(data: Any, env: Mapping[str, str]) -> Substituted:
    """Replace ``${NAME}`` in every string value; a variable not in ``env`` is a problem.

    A list or mapping reached twice (a YAML alias) is substituted once and shared, never
    copied: the result has the document's shape, aliases included. ``touched`` still
    holds every location, through every alias, whose string came from the environment.
    """
    result = Substituted(None, [], set())
    done: dict[int, tuple[Any, tuple[Loc, ...]]] = {}  # id -> (result, touched under it)
    active: set[int] = set()

    def visit(value: Any, loc: Loc) -> tuple[Any, tuple[Loc, ...]]:
        """The substituted value and the locations under it (relative) that it touched."""
        if isinstance(value, str):
            if _VARIABLE.search(value) is None:
                return value, ()
            return _VARIABLE.sub(lambda match: lookup(match, loc), value), ((),)
        if not isinstance(value, dict | list):
            return value, ()
        if id(value) in done:
            return done[id(value)]
        if id(value) in active:
            result.problems.append((loc, "refers to itself"))
            return None, ()
        active.add(id(value))
        touched: list[Loc] = []
        out: Any
        if isinstance(value, list):
            out = []
            for index, item in enumerate(value):
                new, under = visit(item, (*loc, index))
                out.append(new)
                touched.extend((index, *rel) for rel in under)
        else:
            out = {}
            for key, item in value.items():
                if not isinstance(key, str):
                    result.problems.append(((*loc, str(key)), "key must be a string (quote it)"))
                    continue
                out[key], under = visit(item, (*loc, key))
                touched.extend((key, *rel) for rel in under)
        active.discard(id(value))
        done[id(value)] = (out, tuple(touched))
        return done[id(value)]

    def lookup(match: re.Match[str], loc: Loc) -> str:
        name = match.group(1)
        if name not in env:
            result.problems.append((loc, f"environment variable {name} is not set"))
            return ""
        return env[name]

    result.data, touched = visit(data, ())
    result.touched = set(touched)
    return result
