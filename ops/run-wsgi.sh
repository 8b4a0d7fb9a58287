#!/usr/bin/env bash
# granian WSGI: ordinary API traffic, pages and admin, behind nginx (ops/README.md).
# One blocking thread per worker and a worker per core was the fastest set-up
# measured here (bench/servers.py); every setting can be overridden from the
# environment (systemd: /etc/agentsflow/env).
set -euo pipefail
cd "$(dirname "$0")/.."

WSGI_HOST="${WSGI_HOST:-127.0.0.1}"
WSGI_PORT="${WSGI_PORT:-8001}"
WSGI_WORKERS="${WSGI_WORKERS:-$(nproc)}"
WSGI_THREADS="${WSGI_THREADS:-1}"  # blocking threads per worker: requests at a time
VENV="${VENV:-.venv}"

# A worker runs WSGI_THREADS requests at a time, each holding at most one connection:
# a pool of threads + 1 is enough, and workers x DB_POOL_MAX_SIZE stays far below
# PostgreSQL's max_connections (ops/README.md, "Database connections").
export DB_POOL_MIN_SIZE="${WSGI_DB_POOL_MIN_SIZE:-1}"
export DB_POOL_MAX_SIZE="${WSGI_DB_POOL_MAX_SIZE:-$((WSGI_THREADS + 1))}"
# nginx on loopback is the only proxy: the servers believe its X-Forwarded-For,
# which it sets to the address it saw (never the client's own header).
export TRUSTED_PROXIES="${TRUSTED_PROXIES:-127.0.0.1}"
# Each server has its own metrics directory: Prometheus scrapes each server once.
export PROMETHEUS_MULTIPROC_DIR="${WSGI_PROMETHEUS_DIR:-${RUNTIME_DIRECTORY:-$PWD/var/run}/prometheus-wsgi}"
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
find "$PROMETHEUS_MULTIPROC_DIR" -maxdepth 1 -name '*.db' -delete  # counters of a previous run

echo "wsgi: granian on $WSGI_HOST:$WSGI_PORT, $WSGI_WORKERS workers x $WSGI_THREADS threads, DB pool $DB_POOL_MIN_SIZE..$DB_POOL_MAX_SIZE each" \
     "(up to $((WSGI_WORKERS * DB_POOL_MAX_SIZE)) PostgreSQL connections)" >&2
exec "$VENV/bin/granian" \
  --interface wsgi \
  --host "$WSGI_HOST" --port "$WSGI_PORT" \
  --workers "$WSGI_WORKERS" \
  --blocking-threads "$WSGI_THREADS" \
  --http 1 \
  --backlog 4096 \
  --respawn-failed-workers \
  --workers-kill-timeout 30 \
  agentsflow.wsgi:application
