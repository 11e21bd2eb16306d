"""Real WAF filter nodes on loopback: Debian's nginx with libmodsecurity 3 and Apache with
ModSecurity 2, both running the OWASP CRS and writing a JSON audit log.

`start_node` writes the server's config and ModSecurity's rules under a fresh directory,
starts the server in the foreground on 127.0.0.1 (and ::1 when the machine has it) on a
free port, waits until it answers and returns a `WafNode`; `WafNode.stop` sends SIGTERM
to the one pid it started, waits for it and removes the directory. The directory is made
with `tempfile.mkdtemp` and opened to every user because, run as root, both servers
serve pages from unprivileged workers (nginx's ``nobody``, Apache's ``www-data``); logs
are opened by the root parent. Without the Debian packages a node cannot start:
`unavailable` fails the test in CI (``CI`` set, where ``.ci/run`` installs them) and
skips it elsewhere.

The audit engine is ``On``, not Debian's ``RelevantOnly``: every request, clean or not,
leaves one line, so a test knows when the node has written everything
(`WafNode.wait_for_paths`) and can prove a clean request's line maps to nothing.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn, Self

import pytest

Kind = Literal["nginx", "apache"]
Engine = Literal["On", "DetectionOnly"]

HOST = "shop.example.com"  # every request's Host header: a numeric one is a CRS warning
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) tailhook-tests"
CRS_SETUP = Path("/etc/modsecurity/crs/crs-setup.conf")
CRS_RULES = Path("/usr/share/modsecurity-crs/rules")
NGINX_MODULE = Path("/usr/lib/nginx/modules/ngx_http_modsecurity_module.so")
APACHE_MODULES = Path("/usr/lib/apache2/modules")
UNICODE_MAPS = {
    "nginx": Path("/etc/nginx/unicode.mapping"),
    "apache": Path("/etc/modsecurity/unicode.mapping"),
}
PACKAGES = {
    "nginx": "nginx libnginx-mod-http-modsecurity modsecurity-crs",
    "apache": "apache2 libapache2-mod-security2 modsecurity-crs",
}
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


def unavailable(reason: str) -> NoReturn:
    """Fail in CI, where the packages must be installed; skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must install them (.ci/run)", pytrace=False)
    pytest.skip(reason)


def server_binary(kind: Kind) -> str:
    """The server's executable, or `unavailable`."""
    name = "nginx" if kind == "nginx" else "apache2"
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    needed = [CRS_SETUP, CRS_RULES, NGINX_MODULE if kind == "nginx" else APACHE_MODULES]
    missing = [str(path) for path in needed if not path.exists()]
    if found is None or missing:
        unavailable(
            f"{name} with ModSecurity is not installed ({PACKAGES[kind]}; missing: "
            f"{', '.join(missing) or name})"
        )
    return found


def modsecurity_rules(engine: Engine, audit_log: Path, data: Path, unicode_map: Path) -> str:
    """The rules file: Debian's recommended settings that matter here, a JSON audit log, CRS."""
    mapping = f"SecUnicodeMapFile {unicode_map} 20127\n" if unicode_map.exists() else ""
    return (
        f"SecRuleEngine {engine}\n"
        "SecRequestBodyAccess On\n"
        'SecRule REQUEST_HEADERS:Content-Type "(?:application(?:/soap\\+|/)|text/)xml" '
        '"id:200000,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"\n'
        'SecRule REQUEST_HEADERS:Content-Type "application/json" '
        '"id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"\n'
        "SecRequestBodyLimit 13107200\n"
        "SecRequestBodyNoFilesLimit 131072\n"
        "SecRequestBodyLimitAction Reject\n"
        'SecRule REQBODY_ERROR "!@eq 0" "id:200002,phase:2,t:none,log,deny,status:400,'
        "msg:'Failed to parse request body.',logdata:'%{reqbody_error_msg}',severity:2\"\n"
        "SecPcreMatchLimit 1000\n"
        "SecPcreMatchLimitRecursion 1000\n"
        "SecResponseBodyAccess Off\n"
        f"SecTmpDir {data}\n"
        f"SecDataDir {data}\n"
        "SecAuditEngine On\n"
        "SecAuditLogParts ABCFHZ\n"
        "SecAuditLogType Serial\n"
        "SecAuditLogFormat JSON\n"
        f"SecAuditLog {audit_log}\n"
        "SecArgumentSeparator &\n"
        "SecCookieFormat 0\n"
        f"{mapping}"
        "SecStatusEngine Off\n"
        f"Include {CRS_SETUP}\n"
        f"Include {CRS_RULES}/*.conf\n"
    )


def nginx_conf(home: Path, port: int, ipv6: bool) -> str:
    listen6 = f"    listen [::1]:{port};\n" if ipv6 else ""
    temp = "".join(
        f"  {name}_temp_path {home}/tmp/{name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"load_module {NGINX_MODULE};\n"
        "daemon off;\n"
        "worker_processes 1;\n"
        f"pid {home}/run/nginx.pid;\n"
        f"error_log {home}/logs/error.log notice;\n"
        "events { worker_connections 64; }\n"
        "http {\n"
        f"  access_log {home}/logs/access.log;\n"
        f"{temp}"
        "  server {\n"
        f"    listen 127.0.0.1:{port};\n"
        f"{listen6}"
        f"    server_name {HOST};\n"
        f"    root {home}/html;\n"
        "    modsecurity on;\n"
        f"    modsecurity_rules_file {home}/modsecurity.conf;\n"
        "    location / { }\n"  # static files: `return` would answer before ModSecurity
        "  }\n"
        "}\n"
    )


def apache_conf(home: Path, port: int, ipv6: bool) -> str:
    user = ""
    if os.geteuid() == 0:  # Apache refuses to serve pages as root
        name = "www-data" if _user_exists("www-data") else "nobody"
        user = f"User {name}\nGroup #{pwd.getpwnam(name).pw_gid}\n"
    modules = "".join(
        f"LoadModule {name}_module {APACHE_MODULES}/mod_{file}.so\n"
        for name, file in (
            ("mpm_event", "mpm_event"),
            ("authz_core", "authz_core"),
            ("unique_id", "unique_id"),
            ("security2", "security2"),
        )
    )
    return (
        f"ServerRoot {home}\n"
        f"DefaultRuntimeDir {home}/run\n"
        f"PidFile {home}/run/apache2.pid\n"
        f"ErrorLog {home}/logs/error.log\n"
        "LogLevel notice\n"
        f"Listen 127.0.0.1:{port}\n"
        + (f"Listen [::1]:{port}\n" if ipv6 else "")
        + f"ServerName {HOST}\n"
        f"{user}{modules}"
        "StartServers 1\nServerLimit 1\nThreadsPerChild 8\nMaxRequestWorkers 8\n"
        f"DocumentRoot {home}/html\n"
        f"<Directory {home}/html>\n  Require all granted\n</Directory>\n"
        f"Include {home}/modsecurity.conf\n"
    )


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def free_port(ipv6: bool) -> int:
    """A port free on 127.0.0.1 (and on ::1 when asked) just now."""
    with socket.socket(socket.AF_INET) as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
        if ipv6:
            with socket.socket(socket.AF_INET6) as probe6:
                probe6.bind(("::1", port))
    return port


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Response:
    """What a client saw of one request it sent to a node."""

    path: str
    status: int
    content_length: int
    client_port: int
    sent_at: float  # time.time() just before sending


class WafNode:
    """One running server (nginx or Apache) with ModSecurity and the CRS; see the module doc."""

    def __init__(self, kind: Kind, engine: Engine) -> None:
        self.kind: Kind = kind
        self.engine: Engine = engine
        self.home = Path("/nonexistent")  # made by start()
        self.ipv6 = has_ipv6_loopback()
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def audit_log(self) -> Path:
        return self.home / "logs" / "audit.log"

    @property
    def error_log(self) -> Path:
        return self.home / "logs" / "error.log"

    def start(self) -> Self:
        binary = server_binary(self.kind)
        self.home = Path(tempfile.mkdtemp(prefix=f"tailhook-{self.kind}-"))
        try:
            self._prepare()
            for _attempt in range(3):  # another process may take the free port before us
                self.port = free_port(self.ipv6)
                if self._launch(binary):
                    return self
            raise AssertionError(f"{self.kind} did not start:\n{self.error_tail()}")
        except BaseException:
            self.stop()
            raise

    def _prepare(self) -> None:
        self.home.chmod(0o755)
        for name in ("html", "logs", "run", "tmp"):
            (self.home / name).mkdir(mode=0o755)
        data = self.home / "data"
        data.mkdir()
        data.chmod(0o1777)  # ModSecurity's collections, written by the workers' user
        rules = modsecurity_rules(self.engine, self.audit_log, data, UNICODE_MAPS[self.kind])
        (self.home / "modsecurity.conf").write_text(rules)
        self.page("ready")

    def _launch(self, binary: str) -> bool:
        """Start the server and wait for /ready; False when its port was taken meanwhile."""
        if self.kind == "nginx":
            conf = self.home / "nginx.conf"
            conf.write_text(nginx_conf(self.home, self.port, self.ipv6))
            command = [binary, "-p", str(self.home), "-e", str(self.error_log), "-c", str(conf)]
        else:
            conf = self.home / "apache2.conf"
            conf.write_text(apache_conf(self.home, self.port, self.ipv6))
            command = [binary, "-f", str(conf), "-DFOREGROUND"]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TZ": "UTC", "LANG": "C"}
        with (self.home / "logs" / "stderr.log").open("ab") as stderr:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, env=env
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "in use" in self.error_tail():
                    return False
                raise AssertionError(f"{self.kind} exited at start:\n{self.error_tail()}")
            with contextlib.suppress(OSError):
                if self.get("/ready").status == 200:
                    return True
            time.sleep(0.05)
        raise AssertionError(f"{self.kind} did not answer in {START_TIMEOUT}s")

    def error_tail(self) -> str:
        texts = []
        for log in (self.error_log, self.home / "logs" / "stderr.log"):
            with contextlib.suppress(FileNotFoundError):
                texts.append(log.read_text(errors="replace")[-3000:])
        return "\n".join(texts)

    def page(self, name: str) -> str:
        """A static page the node serves (ModSecurity runs on every request to it)."""
        page = self.home / "html" / name
        page.write_text("ok\n")
        page.chmod(0o644)
        return f"/{name}"

    def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
        client: str = "127.0.0.1",
    ) -> Response:
        """Send one request from ``client`` (127.0.0.1 or ::1) and read the whole answer."""
        sent_at = time.time()
        connection = http.client.HTTPConnection(client, self.port, timeout=10)
        try:
            connection.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            given = dict(headers)
            given.setdefault("Host", HOST)
            given.setdefault("User-Agent", USER_AGENT)
            given.setdefault("Accept", "text/html")
            if body is not None:
                given["Content-Length"] = str(len(body))
            for name, value in given.items():
                connection.putheader(name, value)
            connection.endheaders(body)
            assert connection.sock is not None
            client_port = int(connection.sock.getsockname()[1])
            answer = connection.getresponse()
            answer.read()
        finally:
            connection.close()
        length = int(answer.getheader("Content-Length") or 0)
        path = target.partition("?")[0]
        return Response(path, answer.status, length, client_port, sent_at)

    def get(self, target: str) -> Response:
        return self.request("GET", target)

    def audit_paths(self) -> list[str]:
        """The request path of every line the node has written to its audit log."""
        paths = []
        with contextlib.suppress(FileNotFoundError), self.audit_log.open("rb") as log:
            for line in log:
                if line.endswith(b"\n"):  # a line being written is not read yet
                    paths.append(logged_path(json.loads(line)))
        return paths

    def wait_for_paths(self, paths: Iterable[str], timeout: float = 10.0) -> None:
        """Wait until the audit log has a line for each of ``paths``."""
        wanted = set(paths)
        deadline = time.monotonic() + timeout
        while not wanted <= set(self.audit_paths()):
            if time.monotonic() > deadline:
                missing = sorted(wanted - set(self.audit_paths()))
                raise AssertionError(f"{self.kind} logged nothing for {missing}")
            time.sleep(0.02)

    def audit_line_count(self) -> int:
        return len(self.audit_paths())

    def stop(self) -> None:
        """SIGTERM to the server's pid, wait for it; then remove its directory."""
        process = self.process
        try:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(STOP_TIMEOUT)
                    raise AssertionError(
                        f"{self.kind} ignored SIGTERM for {STOP_TIMEOUT}s"
                    ) from None
        finally:
            if self.home.name.startswith(f"tailhook-{self.kind}-"):
                shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def logged_path(line: dict[str, Any]) -> str:
    """The request path of one audit log line, in either layout."""
    request = line.get("request")
    if isinstance(request, dict) and "request_line" in request:  # ModSecurity 2
        target = str(request["request_line"]).split(" ")[1]
    else:
        target = str(line["transaction"]["request"]["uri"])
    return target.partition("?")[0]
