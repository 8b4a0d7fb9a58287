"""ops/nginx.conf as rendered by ops/render.py passes Debian's `nginx -t`, for
production (with and without TLS) and for the loopback runs of tests and benchmarks."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agentsflow.testing import BASE_DIR, NGINX, NGINX_MISSING
from ops.render import NginxConfig, render

REQUIRED = os.environ.get("AGENTSFLOW_REQUIRE_SERVICES") == "1"
needs_nginx = pytest.mark.skipif(
    NGINX_MISSING and not REQUIRED, reason="needs nginx (Debian's nginx package; CI installs it)"
)


def nginx_test(tmp_path, config: NginxConfig) -> subprocess.CompletedProcess:
    conf = tmp_path / "nginx.conf"
    conf.write_text(render(config))
    return subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _writable(tmp_path, **fields) -> NginxConfig:
    """Production values, except the files nginx -t opens (pid, logs, temp) live under tmp_path."""
    (tmp_path / "temp").mkdir(exist_ok=True)
    defaults = {
        "pid": str(tmp_path / "nginx.pid"),
        "error_log": str(tmp_path / "error.log"),
        "access_log": str(tmp_path / "access.log"),
        "temp_dir": str(tmp_path / "temp"),
    }
    return NginxConfig(**{**defaults, **fields})


def _self_signed(tmp_path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agentsflow.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


@needs_nginx
def test_production_config_passes_nginx_t(tmp_path):
    result = nginx_test(tmp_path, _writable(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@needs_nginx
def test_tls_config_passes_nginx_t(tmp_path):
    cert, key = _self_signed(tmp_path)
    config = _writable(tmp_path, tls_certificate=cert, tls_certificate_key=key)
    result = nginx_test(tmp_path, config)
    assert result.returncode == 0, result.stderr
    text = render(config)
    assert "listen 443 ssl http2 default_server" in text and "return 301 https://$host$request_uri;" in text


@needs_nginx
def test_loopback_config_without_limits_passes_nginx_t(tmp_path):
    config = _writable(
        tmp_path, listen="127.0.0.1:8080", daemon=False, user=None, api_rate=None, auth_rate=None, conn_limit=None
    )
    result = nginx_test(tmp_path, config)
    assert result.returncode == 0, result.stderr
    assert "limit_req zone=" not in render(config) and "limit_conn per_ip" not in render(config)


@needs_nginx
def test_a_broken_config_fails_nginx_t(tmp_path):
    """The check above can fail: a config nginx refuses is reported as such."""
    result = nginx_test(tmp_path, _writable(tmp_path, worker_processes="many"))
    assert result.returncode != 0 and "worker_processes" in result.stderr


def test_the_guide_tuning_is_in_the_config():
    text = render(NginxConfig())
    for line in (
        "worker_processes auto;",
        "worker_connections 16384;",
        "keepalive 64;",
        "proxy_http_version 1.1;",
        "gzip on;",
        "proxy_buffers 4 256k;",
        "limit_req_zone $binary_remote_addr zone=api:10m rate=10r/s;",
        "limit_req_zone $auth_limit_key zone=auth:10m rate=5r/s;",
        'add_header Cache-Control "public, max-age=31536000, immutable";',
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "user www-data;",
    ):
        assert line in text, line
    assert "{{" not in text and "$proxy_add_x_forwarded_for" not in text


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"api_rate": "ten per second"}, "api_rate"),
        ({"auth_rate": "5/s"}, "auth_rate"),
        ({"tls_certificate": "/etc/cert.pem"}, "go together"),
    ],
)
def test_bad_values_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        render(NginxConfig(**fields))


def test_command_line_writes_the_same_config(tmp_path):
    output = tmp_path / "nginx.conf"
    subprocess.run(
        [sys.executable, "-m", "ops.render", "--listen", "8080", "--access-log", "none", "-o", str(output)],
        cwd=BASE_DIR,
        check=True,
        timeout=60,
    )
    assert output.read_text() == render(NginxConfig(listen="8080", access_log=None))
