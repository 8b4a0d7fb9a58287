#!/usr/bin/env bash
# uvicorn ASGI: WebSockets, SSE streams and the async (model-calling) views, behind
# nginx (ops/README.md; the paths are agentsflow/serving.py's ASGI_PATHS). Every
# setting can be overridden from the environment (systemd: /etc/agentsflow/env).
set -euo pipefail
cd "$(dirname "$0")/.."

ASGI_HOST="${ASGI_HOST:-127.0.0.1}"
ASGI_PORT="${ASGI_PORT:-8002}"
ASGI_WORKERS="${ASGI_WORKERS:-2}"
VENV="${VENV:-.venv}"

# Many requests in flight per worker (each async view's queries run in a thread of
# its own): a larger pool than a WSGI worker's, still bounded so that
# workers x DB_POOL_MAX_SIZE fits PostgreSQL's max_connections (ops/README.md).
export DB_POOL_MIN_SIZE="${ASGI_DB_POOL_MIN_SIZE:-1}"
export DB_POOL_MAX_SIZE="${ASGI_DB_POOL_MAX_SIZE:-8}"
export TRUSTED_PROXIES="${TRUSTED_PROXIES:-127.0.0.1}"
export PROMETHEUS_MULTIPROC_DIR="${ASGI_PROMETHEUS_DIR:-${RUNTIME_DIRECTORY:-$PWD/var/run}/prometheus-asgi}"
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
find "$PROMETHEUS_MULTIPROC_DIR" -maxdepth 1 -name '*.db' -delete

echo "asgi: uvicorn on $ASGI_HOST:$ASGI_PORT, $ASGI_WORKERS workers, DB pool $DB_POOL_MIN_SIZE..$DB_POOL_MAX_SIZE each" \
     "(up to $((ASGI_WORKERS * DB_POOL_MAX_SIZE)) PostgreSQL connections)" >&2
# --proxy-headers with nginx's address: the client address is nginx's X-Forwarded-For.
# Keep-alive longer than nginx's upstream keepalive_timeout (20 s).
# uvicorn's websockets-sansio protocol, minus the handshake it kept (agentsflow/uvicorn_ws.py).
# No per-message deflate: its zlib state costs ~36 KB a socket for as long as the socket
# is open, and token frames are ~90 bytes (ops/README.md, "WebSockets and memory").
exec "$VENV/bin/uvicorn" agentsflow.asgi:application \
  --host "$ASGI_HOST" --port "$ASGI_PORT" \
  --workers "$ASGI_WORKERS" \
  --loop uvloop --http httptools --ws agentsflow.uvicorn_ws:WebSocketProtocol \
  --lifespan off \
  --no-access-log \
  --proxy-headers --forwarded-allow-ips "$TRUSTED_PROXIES" \
  --backlog 4096 \
  --timeout-keep-alive 75 \
  --timeout-graceful-shutdown 30 \
  --ws-max-size 1048576 \
  --ws-per-message-deflate false
