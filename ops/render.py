"""Render ops/nginx.conf for a deployment, a test or a benchmark.

    python -m ops.render > /etc/nginx/nginx.conf                 # production defaults
    python -m ops.render --listen 127.0.0.1:8080 --static-root /srv/agentsflow/static

The template's ``{{name}}`` fields are filled from ``NginxConfig``; the ASGI
routing comes from agentsflow.serving.ASGI_PATHS.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from agentsflow.serving import nginx_asgi_regex

TEMPLATE = Path(__file__).resolve().parent / "nginx.conf"
_FIELD = re.compile(r"\{\{(\w+)\}\}")
_RATE = re.compile(r"^\d+r/[sm]$")


@dataclass
class NginxConfig:
    """Everything that differs between a production host and a test run."""

    listen: str = "80"  # address:port or port
    wsgi: str = "127.0.0.1:8001"  # granian WSGI
    asgi: str = "127.0.0.1:8002"  # uvicorn ASGI
    static_root: str = "/srv/agentsflow/static"  # STATIC_ROOT, filled by collectstatic
    server_name: str = "_"
    user: str | None = "www-data"  # None: leave the directive out (nginx not started as root)
    worker_processes: str = "auto"
    pid: str = "/run/nginx.pid"
    error_log: str = "/var/log/nginx/error.log"
    access_log: str | None = "/var/log/nginx/agentsflow.access.log"  # None: off
    mime_types: str = "/etc/nginx/mime.types"
    temp_dir: str | None = None  # None: nginx's compiled-in temp paths
    daemon: bool = True  # False: stay in the foreground (tests, benchmarks)
    # Per client address. None switches a zone off (benchmarks measure the servers,
    # not the shield; tests of the platform's own limits need it off too).
    api_rate: str | None = "10r/s"  # the guide's API zone
    api_burst: int = 20
    auth_rate: str | None = "5r/s"  # the guide's auth zone: sign-in and key creation
    auth_burst: int = 5
    max_body_bytes: int = 1024 * 1024  # the platform's MAX_BODY_BYTES
    rlimit_nofile: int = 65535  # descriptors per worker (systemd's LimitNOFILE must allow it)
    conn_limit: int | None = 256  # open streams/WebSockets per client address; None: no limit
    tls_certificate: str | None = None  # with tls_certificate_key: listen 443 ssl, port 80 redirects
    tls_certificate_key: str | None = None

    def values(self) -> dict[str, str]:
        for name in ("api_rate", "auth_rate"):
            rate = getattr(self, name)
            if rate is not None and not _RATE.match(rate):
                raise ValueError(f"{name} must look like 10r/s or 600r/m, got {rate!r}")
        if bool(self.tls_certificate) != bool(self.tls_certificate_key):
            raise ValueError("tls_certificate and tls_certificate_key go together")
        indent = " " * 12
        return {
            "listen": self.listen if not self.tls_certificate else "443 ssl http2",
            "wsgi": self.wsgi,
            "asgi": self.asgi,
            "static_root": self.static_root.rstrip("/"),
            "server_name": self.server_name,
            "user": f"user {self.user};" if self.user else "",
            "worker_processes": self.worker_processes,
            "pid": self.pid,
            "error_log": self.error_log,
            "daemon": "" if self.daemon else "daemon off;",
            "access_log": f"{self.access_log} agentsflow buffer=64k flush=1s" if self.access_log else "off",
            "mime_types": self.mime_types,
            "temp_paths": self._temp_paths(),
            "api_rate": self.api_rate or "1r/s",  # the zone must exist; unused when off
            "auth_rate": self.auth_rate or "1r/s",
            "api_limit": f"{indent}limit_req zone=api burst={self.api_burst} nodelay;" if self.api_rate else "",
            "auth_limit": f"{indent}limit_req zone=auth burst={self.auth_burst} nodelay;" if self.auth_rate else "",
            "max_body_bytes": str(self.max_body_bytes),
            "rlimit_nofile": str(self.rlimit_nofile),
            "conn_limit": f"{indent}limit_conn per_ip {self.conn_limit};" if self.conn_limit else "",
            "asgi_regex": nginx_asgi_regex(),
            "tls": self._tls(),
            "tls_redirect": self._tls_redirect(),
        }

    def _temp_paths(self) -> str:
        if not self.temp_dir:
            return ""
        kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        return "\n".join(f"    {kind}_temp_path {self.temp_dir}/{kind};" for kind in kinds)

    def _tls(self) -> str:
        if not self.tls_certificate:
            return ""
        return (
            f"        ssl_certificate {self.tls_certificate};\n"
            f"        ssl_certificate_key {self.tls_certificate_key};\n"
            "        ssl_protocols TLSv1.2 TLSv1.3;\n"
            "        ssl_session_cache shared:SSL:10m;\n"
            "        ssl_session_timeout 1d;"
        )

    def _tls_redirect(self) -> str:
        if not self.tls_certificate:
            return ""
        return (
            "    server {\n"
            f"        listen {self.listen};\n"
            f"        server_name {self.server_name};\n"
            "        return 301 https://$host$request_uri;\n"
            "    }"
        )


def render(config: NginxConfig | None = None, template: Path = TEMPLATE) -> str:
    """The nginx configuration text; fails on a field the template has and the config lacks."""
    values = (config or NginxConfig()).values()
    text = template.read_text()
    missing = sorted({name for name in _FIELD.findall(text) if name not in values})
    if missing:
        raise KeyError(f"template fields without a value: {missing}")
    return _FIELD.sub(lambda match: values[match.group(1)], text)


def _int_or_none(value: str) -> int | None:
    return None if value == "none" else int(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = NginxConfig()
    for field in fields(NginxConfig):
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        if isinstance(default, bool):
            parser.add_argument(flag, type=lambda v: v.lower() in {"1", "true", "yes", "on"}, default=default)
        elif isinstance(default, int):
            parser.add_argument(
                flag, type=_int_or_none, default=default, help=f"default: {default} ('none' leaves it out)"
            )
        else:
            parser.add_argument(flag, default=default, help=f"default: {default} ('none' leaves it out)")
    parser.add_argument("--output", "-o", help="write here instead of stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    output = args.pop("output")
    config = NginxConfig(**{k: (None if v == "none" else v) for k, v in args.items()})
    text = render(config)
    if output:
        Path(output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
