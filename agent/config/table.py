"""The shape of the table of keys (``Key``, ``Section``) and what it compiles to: a tree
of ``Node``s that generates the schema, finds problems and builds the dataclasses, each
by one walk over the same keys.

A place names where a key or section is in the file: ``shutdown_timeout``,
``webhooks[].tls.ca_file`` (``[]``: each item of a list), ``sources[file].paths`` (only in
the items whose tag key, here ``type``, is ``file``). A key in ``sources[]`` is in every
variant; the variants' dataclasses must agree on its default.

A section's ``rules`` are checks across its keys (``agent.config.rules``); each gets the
section's location and raw mapping (before conversion, possibly invalid to the schema,
so it checks types itself) and yields problems. ``finish`` turns the converted keyword
arguments into the dataclass's when keys do not map one to one (a URL's credentials
becoming a header).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.config.document import Loc, Located
from agent.config.kinds import Kind, Schema

Rule = Callable[[Loc, dict[str, Any]], Iterable[Located]]
Finish = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Key:
    """One key: where it is, what kind of value it holds, what it is for (the schema's
    ``description``). It fills the dataclass field of its name, or ``field`` (several
    fields when the kind converts to a tuple of them). ``secret``: a value that may be a
    credential, never quoted in a message (nor anything the environment gave)."""

    place: str
    kind: Kind
    description: str
    required: bool = False
    secret: bool = False
    field: str | tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        return self.place.rpartition(".")[2]

    @property
    def fields(self) -> tuple[str, ...]:
        if self.field is None:
            return (self.name,)
        return (self.field,) if isinstance(self.field, str) else self.field


@dataclass(frozen=True)
class Section:
    """One mapping of the file and the dataclass it becomes (``model``). A list's items
    of several types have a section without a model naming the ``tag`` key, and one
    section per variant (``sources[file]``). ``one_of``: exactly one of these keys is
    given, else ``message``."""

    place: str
    model: type[Any] | None
    description: str
    rules: tuple[Rule, ...] = ()
    finish: Finish | None = None
    tag: str | None = None
    one_of: tuple[str, ...] = ()
    message: str = ""


class Node:
    """A compiled section: its keys by name (a nested section is a key too)."""

    def __init__(self, section: Section) -> None:
        self.section = section
        self.keys: dict[str, Key] = {}  # a variant's: those of all variants, then its own
        self.variants: dict[str, Node] = {}
        self.rules: tuple[Rule, ...] = section.rules
        self.checked: list[tuple[str, Kind]] = []  # set by seal()
        self.fill: dict[str, tuple[Callable[[Any], Any], tuple[str, ...]]] = {}

    # --- problems and building: one walk each ---

    def seal(self) -> None:
        """Once its keys are all known: which need checking, and how each converts."""
        self.checked = [(name, key.kind) for name, key in self.keys.items() if key.kind.checks]
        self.fill = {name: (key.kind.convert, key.fields) for name, key in self.keys.items()}

    def check(self, loc: Loc, raw: dict[str, Any], out: list[Located]) -> None:
        """Add to ``out`` every problem of its keys' values (nested sections included),
        then its rules'."""
        node = self._variant(raw)
        for name, kind in node.checked:
            if name in raw:
                kind.check((*loc, name), raw[name], out)
        for rule in node.rules:
            out.extend(rule(loc, raw))

    def build(self, raw: dict[str, Any]) -> Any:
        """The dataclass of a mapping already free of problems; keys left out keep the
        dataclass defaults."""
        node = self.variants[raw[self.section.tag]] if self.section.tag else self
        fields: dict[str, Any] = {}
        for name, value in raw.items():
            convert, names = node.fill[name]
            if len(names) == 1:
                fields[names[0]] = convert(value)
            else:
                fields.update(zip(names, convert(value), strict=True))
        if node.section.finish is not None:
            fields = node.section.finish(fields)
        assert node.section.model is not None  # a section with a tag is never built itself
        return node.section.model(**fields)

    def _variant(self, raw: dict[str, Any]) -> Node:
        """The variant ``raw`` names with its tag; itself (common keys only) if none."""
        if not self.section.tag:
            return self
        tag = raw.get(self.section.tag)
        return self.variants.get(tag, self) if isinstance(tag, str) else self

    # --- the schema ---

    def schema(self) -> Schema:
        """This section's JSON Schema: closed (``additionalProperties: false``), or, for
        variants, closed by each variant's branch so an error points at the key."""
        if self.variants:
            return self._variants_schema()
        out: Schema = {"type": "object", "additionalProperties": False}
        out |= self._properties(self.keys, self._models())
        if self.section.one_of:
            out["errorMessage"] = self.section.message
            out["oneOf"] = [{"required": [name]} for name in self.section.one_of]
        return out

    def _variants_schema(self) -> Schema:
        tag = self.section.tag
        branches = []
        for value, variant in self.variants.items():
            own = {name: key for name, key in variant.keys.items() if name not in self.keys}
            branch: Schema = {"type": "object", "additionalProperties": False}
            branch |= variant._properties(own, variant._models())
            branch["properties"] = {name: True for name in self.keys} | branch["properties"]
            condition = {"properties": {tag: {"const": value}}, "required": [tag]}
            branches.append({"if": condition, "then": branch})
        out: Schema = {"type": "object"}
        out |= self._properties(self.keys, self._models())
        out["allOf"] = branches
        return out

    def _models(self) -> list[type[Any]]:
        if self.section.model is not None:
            return [self.section.model]
        return [
            variant.section.model for variant in self.variants.values() if variant.section.model
        ]

    @staticmethod
    def _properties(keys: dict[str, Key], models: Sequence[type[Any]]) -> Schema:
        out: Schema = {}
        required = [name for name, key in keys.items() if key.required]
        if required:
            out["required"] = required
        out["properties"] = {name: _property(key, models) for name, key in keys.items()}
        return out


def _property(key: Key, models: Sequence[type[Any]]) -> Schema:
    out: Schema = {"description": key.description} | key.kind.schema()
    if not key.required:
        defaults = {repr(default_of(model, key.fields)) for model in models}
        if len(defaults) > 1:
            raise ValueError(f"{key.place}: its dataclasses disagree on its default")
        rendered = key.kind.render(default_of(models[0], key.fields))
        if rendered is not None:
            out["default"] = rendered
    return out


def default_of(model: type[Any], fields: tuple[str, ...]) -> Any:
    """The dataclass default of ``fields`` (a tuple of them for several), None if none."""
    by_name = {field.name: field for field in dataclasses.fields(model)}
    values = []
    for name in fields:
        field = by_name[name]
        if field.default is not dataclasses.MISSING:
            values.append(field.default)
        elif field.default_factory is not dataclasses.MISSING:
            values.append(field.default_factory())
        else:
            return None
    return values[0] if len(values) == 1 else tuple(values)


class Nested(Kind):
    """A key holding a section (``webhooks[].tls``): a mapping, built into its dataclass."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def schema(self) -> Schema:
        return self.node.schema()

    def check(self, loc: Loc, value: Any, out: list[Located]) -> None:
        if isinstance(value, dict):
            self.node.check(loc, value, out)

    def convert(self, value: Any) -> Any:
        return self.node.build(value)

    def render(self, default: Any) -> Any:
        return None  # each of its keys shows its own


class Items(Nested):
    """A key holding a list of sections (``webhooks``); built into a tuple."""

    def schema(self) -> Schema:
        return {"type": "array", "items": self.node.schema()}

    def check(self, loc: Loc, value: Any, out: list[Located]) -> None:
        if isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, dict):
                    self.node.check((*loc, index), item, out)

    def convert(self, value: Any) -> tuple[Any, ...]:
        return tuple(self.node.build(item) for item in value)


@dataclass(frozen=True)
class Table:
    """The compiled table: the root section, the ``$defs`` its kinds share, and the
    places that hold secrets."""

    root: Node
    definitions: dict[str, Schema]
    secrets: frozenset[tuple[str, ...]]

    def holds_secret(self, loc: Loc) -> bool:
        """Whether ``loc`` is at or under a key that may hold a secret."""
        parts = tuple("[]" if isinstance(part, int) else part for part in loc)
        return any(parts[: len(secret)] == secret for secret in self.secrets)


def compile_table(entries: Iterable[Section | Key]) -> Table:
    """The tree of the table's sections and keys, in the table's order."""
    nodes: dict[str, Node] = {}
    definitions: dict[str, Schema] = {}
    secrets = set()
    for entry in entries:
        parent_place, _, name = entry.place.rpartition(".")
        if entry.place and parent_place not in nodes:
            raise ValueError(f"{entry.place}: its section {parent_place!r} is not declared before")
        if isinstance(entry, Key):
            node = nodes[parent_place]
            if name in node.keys:
                raise ValueError(f"{entry.place} is declared twice")
            node.keys[name] = entry
            definitions |= entry.kind.definitions()
            if entry.secret:
                secrets.add(_place_parts(entry.place))
        elif not entry.place:
            nodes[""] = Node(entry)
        else:
            _attach(entry, nodes, parent_place, name)
    for node in nodes.values():
        for variant in node.variants.values():
            variant.keys = node.keys | variant.keys
            variant.rules = node.rules + variant.rules
    for node in nodes.values():
        node.seal()
    return Table(nodes[""], definitions, frozenset(secrets))


def _attach(section: Section, nodes: dict[str, Node], parent_place: str, name: str) -> None:
    key_name, bracket, variant = name.partition("[")
    if variant not in ("", "]"):  # sources[file]: a variant of sources[]
        base = nodes[f"{parent_place}.{key_name}[]".lstrip(".")]
        base.variants[variant.rstrip("]")] = nodes[section.place] = Node(section)
        return
    node = nodes[section.place] = Node(section)
    kind: Kind = Items(node) if bracket else Nested(node)
    key = Key(section.place, kind, section.description, field=key_name)
    nodes[parent_place].keys[key_name] = key


def _place_parts(place: str) -> tuple[str, ...]:
    """A place as the parts of a location, each list index (or variant) ``[]``:
    ``webhooks[].headers`` -> ``("webhooks", "[]", "headers")``, as ``holds_secret``
    sees ``("webhooks", 0, "headers")``."""
    parts: list[str] = []
    for segment in place.split("."):
        name, bracket, _ = segment.partition("[")
        parts += [name, "[]"] if bracket else [name]
    return tuple(parts)
