"""The fast path is held to the schemas: a differential test (issue 11, item 3).

For every input kind (native hit, vulnerability, system, scope; ModSecurity, seeded from
the recorded real transactions), thousands of seeded valid and mutated lines go through
the pipeline (``LineProcessor.process``: the msgspec fast path, falling back to the exact
path) and through a reference built on the ``jsonschema`` library and the mappings:

- the pipeline accepts a line exactly when the reference does: ``jsonschema`` (Draft
  2020-12, the shipped schema) says valid and the mapping takes its values;
- an accepted line's notification bytes equal ``orjson.dumps`` of the mapped line;
- a rejected line's reason and detail equal the exact path's (orjson, jsonschema_rs,
  ``first_schema_error``), so the fast path never changes what a user reads;
- every line the fast path takes on its own is one the reference accepts, with the same
  bytes, and it takes most valid hits (a fast path that took nothing would pass the rest).
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from prometheus_client import CollectorRegistry

from agent.errors import RejectedLine
from agent.formats import EVENT_TYPES, MappingContext, load_format
from agent.formats.modsecurity import map_entry, read_entry
from agent.formats.native import MAPPERS, InvalidValue, client_addresses, unix_seconds
from agent.formats.native_fast import fast_hit, seconds
from agent.formats.wallarm import vulnerability_fields
from agent.pipeline import LineProcessor, decode_line
from agent.pipeline.rejected import RejectedLog
from agent.schemas import load_schema, python_validator
from agent.spool.routes import facts_of
from agent.telemetry import Metrics
from tests.support.event_docs import BAD_ADDRESSES, IPV6, valid_modsecurity, valid_native
from tests.support.event_mutations import edge_mutations, mutated, raw_mutated, serialised

DATA = Path(__file__).parent / "data" / "modsecurity"
CTX = MappingContext()
#: Valid and mutated documents per kind: 10,000 or more of each input kind.
VALID, MUTATED = 5_000, 5_000

Verdict = tuple[str, bytes | str]  # ("accepted", notification bytes) or ("rejected", reason)


def native_reference() -> Callable[[bytes], Verdict]:
    validators = {kind: python_validator(kind) for kind in EVENT_TYPES}

    def verdict(line: bytes) -> Verdict:
        try:
            obj = decode_line(line)
        except RejectedLine as rejected:
            return "rejected", rejected.reason
        if not isinstance(obj, dict):
            return "rejected", "invalid_schema"
        event = obj.get("event")
        if not isinstance(event, str) or event not in validators:
            return "rejected", "unknown_event"
        if not validators[event].is_valid(obj):
            return "rejected", "invalid_schema"
        try:
            return "accepted", orjson.dumps(MAPPERS[event](obj, CTX))
        except InvalidValue:
            return "rejected", "invalid_schema"

    return verdict


def modsecurity_reference() -> Callable[[bytes], Verdict | None]:
    validator = python_validator("modsecurity")

    def verdict(line: bytes) -> Verdict | None:
        """None: valid, but a transaction without rule messages sends nothing."""
        try:
            obj = decode_line(line)
        except RejectedLine as rejected:
            return "rejected", rejected.reason
        if not isinstance(obj, dict) or not validator.is_valid(obj):
            return "rejected", "invalid_schema"
        try:
            entry = read_entry(obj)
        except InvalidValue:
            return "rejected", "invalid_schema"
        return None if entry is None else ("accepted", orjson.dumps(map_entry(entry)))

    return verdict


def accepted_by(reference: Callable[[bytes], Verdict | None]) -> Callable[[bytes], bool]:
    def accepts(line: bytes) -> bool:
        verdict = reference(line)
        return verdict is not None and verdict[0] == "accepted"

    return accepts


def exact_rejection(fmt: Any, line: bytes) -> tuple[str, str] | None:
    """The exact path's reason and detail for a line (None when it accepts it)."""
    try:
        fmt.convert(decode_line(line), CTX)
    except RejectedLine as rejected:
        return rejected.reason, rejected.detail
    return None


def through_pipeline(
    fmt_name: str, lines: list[bytes], state: Path, verdicts: list[Verdict | None]
) -> tuple[list[bytes], list[tuple[str, str]]]:
    """What ``LineProcessor.process`` keeps of the lines, and what it rejects, in order;
    the facts filters judge and a vulnerability's line fields are checked on the way:
    those of the notification kept, and those of the line."""
    processor = LineProcessor(
        "diff",
        load_format(fmt_name),
        CTX,
        Metrics(CollectorRegistry()),
        RejectedLog(state, "diff", max_bytes=1 << 40),
    )
    kept = processor.process(lines)
    body, starts = bytes(kept.body), [*kept.starts, len(kept.body)]
    notes = [body[starts[i] : starts[i + 1]] for i in range(len(starts) - 1)]
    log = state / "rejected" / "diff.jsonl"
    rows = log.read_bytes().split(b"\n")[:-1] if log.exists() else []
    entries = [json.loads(row) for row in rows]
    kinds = [orjson.loads(note)["object_type"] for note in notes]
    assert kept.facts == [facts_of(t, orjson.loads(n)) for t, n in zip(kinds, notes, strict=True)]
    sent = [
        line
        for line, v in zip(lines, verdicts, strict=True)
        if v is not None and v[0] == "accepted"
    ]
    assert len(notes) == len(sent), "the pipeline kept another number of lines than sent"
    fields = {
        n: vulnerability_fields(orjson.loads(line))
        for n, (kind, line) in enumerate(zip(kinds, sent, strict=True))
        if kind == "vulnerability"
    }
    assert kept.fields == fields
    return notes, [(entry["reason"], entry["detail"]) for entry in entries]


def lines_of(
    make: Callable[[random.Random], Any],
    rng: random.Random,
    accepts: Callable[[bytes], bool],
    edged: int = 3,
) -> list[bytes]:
    """VALID valid lines, MUTATED broken ones (documents and bytes), and ``edged`` valid
    documents changed in every place in every way of ``edge_mutations``; newline-free."""
    valid = [serialised(make(rng), rng) for _ in range(VALID)]
    broken = []
    for _ in range(MUTATED):
        doc = orjson.loads(rng.choice(valid))
        line = (
            raw_mutated(serialised(doc, rng), rng)
            if rng.random() < 0.3
            else serialised(mutated(doc, rng), rng)
        )
        broken.append(line)
    bases = [line for line in valid[:100] if accepts(line)][:edged]
    for base in bases:
        broken += [serialised(doc, rng) for doc in edge_mutations(orjson.loads(base))]
    lines = [line.replace(b"\n", b"\\n").replace(b"\r", b"\\r") for line in valid + broken]
    return [line for line in lines if line.strip()]


def assert_same_verdicts(
    fmt_name: str,
    lines: list[bytes],
    reference: Callable[[bytes], Verdict | None],
    state: Path,
) -> dict[str, int]:
    fmt = load_format(fmt_name)
    verdicts = [reference(line) for line in lines]
    notes, rejected = through_pipeline(fmt_name, lines, state, verdicts)
    expected_notes = [v[1] + b"\n" for v in verdicts if v is not None and v[0] == "accepted"]
    expected_rejected = []
    for line, v in zip(lines, verdicts, strict=True):
        exact = exact_rejection(fmt, line)
        assert (exact is None) == (v is None or v[0] == "accepted"), (line, v, exact)
        if exact is not None:
            assert exact[0] == v[1], (line, v, exact)  # type: ignore[index]
            expected_rejected.append(exact)
    assert len(notes) == len(expected_notes)
    for got, want in zip(notes, expected_notes, strict=True):
        assert got == want
    assert rejected == expected_rejected
    counts = {"lines": len(lines), "accepted": len(notes), "rejected": len(rejected)}
    counts["fast"] = fast_taken(fmt, lines, verdicts)
    return counts


def fast_taken(fmt: Any, lines: list[bytes], verdicts: list[Verdict | None]) -> int:
    """How many lines the fast path took, each checked against the reference."""
    taken = 0
    for line, v in zip(lines, verdicts, strict=True):
        if b"\x00" in line:  # a NUL byte fails msgspec too; the exact path names it
            continue
        note = fmt.fast_hit(line)
        if note is not None:
            assert v == ("accepted", msgspec.json.encode(note)), line
            taken += 1
    return taken


@pytest.mark.slow
@pytest.mark.parametrize("kind", EVENT_TYPES)
def test_native_fast_path_keeps_the_schema_verdicts_and_bytes(kind: str, tmp_path: Path) -> None:
    rng = random.Random(f"fast-path-{kind}")
    reference = native_reference()
    lines = lines_of(lambda rng: valid_native(kind, rng), rng, accepted_by(reference))
    counts = assert_same_verdicts("native", lines, reference, tmp_path)
    assert counts["lines"] >= VALID + MUTATED - 10
    assert counts["accepted"] > VALID // 2 and counts["rejected"] > MUTATED // 2, counts
    if kind == "hit":  # most valid hits take the fast path
        assert counts["fast"] > counts["accepted"] * 0.6, counts
    else:
        assert counts["fast"] == 0


def modsecurity_seeds() -> list[dict[str, Any]]:
    files = sorted(DATA.glob("*.jsonl"))
    return [orjson.loads(line) for path in files for line in path.read_bytes().splitlines()]


@pytest.mark.slow
def test_modsecurity_path_keeps_the_schema_verdicts_and_bytes(tmp_path: Path) -> None:
    seeds = modsecurity_seeds()
    assert len(seeds) >= 50
    rng = random.Random("fast-path-modsecurity")
    reference = modsecurity_reference()
    lines = lines_of(lambda rng: valid_modsecurity(seeds, rng), rng, accepted_by(reference), 1)
    counts = assert_same_verdicts("modsecurity", lines, reference, tmp_path)
    assert counts["lines"] >= VALID + MUTATED - 10
    assert counts["accepted"] > VALID // 2 and counts["rejected"] > MUTATED // 4, counts


def test_a_hit_the_fast_path_takes_gives_the_exact_bytes() -> None:
    line = (Path(__file__).parent / "data" / "native" / "detections.jsonl").read_bytes()
    hit = line.splitlines()[0]
    note = fast_hit(hit)
    assert note is not None
    assert msgspec.json.encode(note) == native_reference()(hit)[1]


@pytest.mark.parametrize(
    "line",
    [
        b'{"event":"hit","extra":1e400}',
        b'{"event":"hit","x":"\xff"}',
        b'{"event":"scope","time":0,"change":"added","kind":"ip","values":["a"]}',
        b"[]",
        b"",
    ],
)
def test_lines_outside_the_subset_are_left_to_the_exact_path(line: bytes) -> None:
    assert fast_hit(line) is None


@pytest.mark.parametrize(
    "addr",
    [
        *BAD_ADDRESSES,
        *IPV6,
        *(
            f"{a}.{b}.{c}.{d}"
            for a in (0, 1, 9, 10, 99, 100, 199, 200, 249, 250, 255, 256)
            for b in (0, 7, 255)
            for c in (0, 255)
            for d in (0, 1, 255)
        ),
        "00.0.0.0",
        "1.2.3.4\x00",
        "1.2.3.-4",
        "+1.2.3.4",
        "1.2.3.4/32",
    ],
)
def test_client_addresses_agrees_with_ipaddress(addr: str) -> None:
    try:
        ip: Any = ipaddress.ip_address(addr)
    except ValueError:
        with pytest.raises(ValueError):
            client_addresses(addr)
        return
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        expected = (str(mapped), None) if mapped is not None else (None, str(ip))
    else:
        expected = (str(ip), None)
    assert client_addresses(addr) == expected


def test_an_integer_beyond_64_bits_rejects_its_line_alone(tmp_path: Path) -> None:
    """orjson reads 18446744073709551616 as a float the schema's ``integer`` accepts; its
    notification could not be written, and the batch it came in was lost with it."""
    good = (Path(__file__).parent / "data" / "native" / "detections.jsonl").read_bytes()
    hit = good.splitlines()[0]
    huge = hit.replace(b'"stamps":[1173]', b'"stamps":[18446744073709551616]')
    assert huge != hit
    verdicts = [native_reference()(line) for line in (huge, hit)]
    notes, rejected = through_pipeline("native", [huge, hit], tmp_path, verdicts)
    assert notes == [native_reference()(hit)[1] + b"\n"]  # type: ignore[operator]
    assert rejected == [
        (
            "invalid_schema",
            "/detection/stamps: 18446744073709551616 is larger than 18446744073709551615",
        )
    ]


@pytest.mark.parametrize("year", [1, 1969, 1970, 2025, 2105, 2106, 2107, 9999])
@pytest.mark.parametrize("fraction", ["", ".0", ".5", ".999999", ".9999999", ".999999999999"])
@pytest.mark.parametrize("zone", ["Z", "z", "+00:00", "-23:59", "+23:59", "+24:00", "Z\n"])
def test_fast_seconds_are_the_mapping_s_or_none(year: int, fraction: str, zone: str) -> None:
    """The fast path's time (fraction cut before a cached parse) is the exact path's
    ``unix_seconds`` of a time the schema's pattern takes, or it leaves the line."""
    pattern = load_schema("hit")["$defs"]["time"]["pattern"]
    for clock in ("00:00:00", "23:59:59", "12:00:01"):
        for day in ("01-01", "12-31", "02-29", "06-15"):
            value = f"{year:04d}-{day}T{clock}{fraction}{zone}"
            try:
                exact = unix_seconds(value, "/time") if re.search(pattern, value) else None
            except InvalidValue:
                exact = None
            fast = seconds(value)
            assert fast is None or fast == exact, (value, fast, exact)
            if fraction == "" and exact is not None:
                assert fast == exact, value


def _ipaddress_verdict(addr: str | bytes) -> tuple[str | None, str | None] | None:
    """What ``client_addresses`` must give, from ``ipaddress`` alone (None: not an IP)."""
    try:
        ip: Any = ipaddress.ip_address(addr)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped
        return (str(mapped), None) if mapped is not None else (None, str(ip))
    return str(ip), None


IPV6_SEEDS = (
    *IPV6,
    "1:2:3:4:5:6:7::",
    "::2:3:4:5:6:7:8",
    "1:2:3:4:5:6:1.2.3.4",
    "0:0:0:0:0:ffff:255.255.255.255",
    "::2",
    "::ffff:0:1.2.3.4",
    "abcd:ef01:2345:6789:abcd:ef01:2345:6789",
)


@pytest.mark.slow
def test_ipv6_addresses_read_as_ipaddress_reads_them() -> None:
    """Client addresses are read through inet_pton/inet_ntop where that gives what
    ``ipaddress`` gives; 100,000 seeded edits of IPv6 addresses hold it to that."""
    taken = read_seeded_edits("ipv6", IPV6_SEEDS, "0123456789abcdefABCDEFg:.%/ \n\u0661")
    assert taken > 20_000


def read_seeded_edits(seed: str, seeds: tuple[str, ...], alphabet: str) -> int:
    """100,000 addresses, each a seed given up to three edits (a character of
    ``alphabet`` put in, one taken out, or both), read by ``client_addresses`` and held to
    ``ipaddress``: how many of them are addresses."""
    rng = random.Random(seed)
    taken = 0
    for _ in range(100_000):
        addr = rng.choice(seeds)
        for _ in range(rng.randrange(4)):
            at = rng.randrange(len(addr) + 1)
            edit = rng.choice(("", rng.choice(alphabet)))
            addr = addr[:at] + edit + addr[at + rng.randrange(2) :]
        expected = _ipaddress_verdict(addr)
        if expected is None:
            with pytest.raises(ValueError):
                client_addresses(addr)
        else:
            taken += 1
            assert client_addresses(addr) == expected, addr
    return taken


@pytest.mark.slow
def test_ipv6_addresses_written_as_ipaddress_writes_them() -> None:
    rng = random.Random("ipv6-written")
    choices = (0, 0, 0, 1, 2, 0xFFFF, 0x100, 15)
    for _ in range(100_000):
        groups = [rng.choice((*choices, rng.randrange(65536))) for _ in range(8)]
        packed = b"".join(group.to_bytes(2, "big") for group in groups)
        addr = ":".join(f"{group:x}" for group in groups)
        assert client_addresses(addr) == _ipaddress_verdict(packed), addr


@pytest.mark.slow
def test_ipv4_addresses_read_as_ipaddress_reads_them() -> None:
    """An address without ``:`` is read by glibc's ``inet_pton``; 100,000 seeded edits of
    IPv4 addresses (leading zeros, short forms, signs, non-ASCII digits) hold it to
    ``ipaddress``."""
    seeds = ("0.0.0.0", "1.2.3.4", "10.0.0.1", "127.0.0.1", "192.168.255.254", "255.255.255.255")
    taken = read_seeded_edits("ipv4", seeds, "0123456789.0x+- \n\u0661")
    assert taken > 20_000


def test_msgspec_writes_what_orjson_writes() -> None:
    """The fast path's notification is written by msgspec, the exact path's by orjson:
    the same bytes for every string (every code point, escaped or not), every int64 and
    every float below 1e16 in size (from 1e16 on msgspec writes ``1e16`` where orjson
    writes ``1e+16``, so the fast path leaves such a line to the exact path)."""
    encode = msgspec.json.encode
    points = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    for start in range(0, len(points), 4096):
        chunk = points[start : start + 4096]
        assert encode(chunk) == orjson.dumps(chunk)
    rng = random.Random("floats")
    floats = [0.0, -0.0, 5e-324, 9999999999999998.0, -9999999999999998.0, 1e15, 1e-7]
    floats += [rng.uniform(-1e16, 1e16) / 10.0 ** rng.randrange(0, 308) for _ in range(100_000)]
    floats += [rng.random() * 10.0 ** rng.randrange(-20, 17) for _ in range(100_000)]
    floats = [value for value in floats if abs(value) < 1e16]
    assert encode(floats) == orjson.dumps(floats)
    assert encode(1e16) != orjson.dumps(1e16)  # why the fast path takes floats below it
    ints = [0, -1, 2**63 - 1, -(2**63), *(rng.randrange(-(2**63), 2**63) for _ in range(10_000))]
    assert encode(ints) == orjson.dumps(ints)


def test_the_mapping_caches_keep_no_long_key(tmp_path: Path) -> None:
    """A line's values are its writer's to choose: a long time, attack type, IPv6 scope id
    or point (or a point of many parts) is mapped (the exact path takes what the fast
    path leaves) but never kept as a cache key, so thousands of such lines cannot make
    the caches hold much memory: a second round of new long values leaves every cache
    the size the first left it."""
    from agent.formats import native, native_fast

    caches: list[Any] = [
        native._rfc3339_seconds,
        native._cached_other_addresses,
        native_fast._time_seconds,
        native_fast._is_attack_type,
    ]
    line = (Path(__file__).parent / "data" / "native" / "detections.jsonl").read_bytes()
    base = orjson.loads(line.splitlines()[0])
    long = "x" * 10_000
    changes: list[Callable[[dict[str, Any], int], None]] = [
        lambda doc, n: doc.update(time=f"2025-06-15T15:06:00.{'1' * 10_000}{n}Z"),
        lambda doc, n: doc.update(time=f"2025-06-15T15:06:00Z{long}{n}"),  # no date
        lambda doc, n: doc.update(attack_type=f"sqli{long}{n}"),
        lambda doc, n: doc["client"].update(addr=f"fe80::1%{long}{n}"),
        lambda doc, n: doc.update(point=["get", f"p{long}{n}"]),
        lambda doc, n: doc.update(point=["get", str(n), *"a" * 39]),  # many short parts
    ]
    sizes = []
    for first in (0, 10):
        lines = []
        for change in changes:
            for n in range(first, first + 10):
                doc = json.loads(json.dumps(base))
                change(doc, n)
                lines.append(orjson.dumps(doc))
        verdicts = [native_reference()(line) for line in lines]
        outcomes = [verdict[0] for verdict in verdicts]
        assert outcomes == ["accepted"] * 10 + ["rejected"] * 10 + ["accepted"] * 40
        state = tmp_path / str(first)
        state.mkdir()
        notes, rejected = through_pipeline("native", lines, state, verdicts)
        assert notes == [v[1] + b"\n" for v in verdicts if v[0] == "accepted"]  # type: ignore[operator]
        assert [reason for reason, _ in rejected] == ["invalid_schema"] * 10
        sizes.append([cache.cache_info().currsize for cache in caches])
        sizes[-1].append(len(native_fast._parameters))
    assert sizes[1] == sizes[0]
