"""Botlnek settings: everything an operator changes comes from BOTLNEK_* variables."""

import secrets
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from aggregates.limits import Rate
from aggregates.webhooks.targets import AllowList
from botlnek_site.env import env_bool, env_int, env_list, env_str

# Where this deployment keeps its files: the working directory's ./data unless
# BOTLNEK_DATA_DIR says otherwise; never beside the code, which an installed package
# keeps in site-packages.
DATA_DIR = Path(env_str("BOTLNEK_DATA_DIR") or Path.cwd() / "data").resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("BOTLNEK_DEBUG", default=False)


# Plain HTTP is served by default (docs/operations.md). Behind TLS, BOTLNEK_HTTPS=1
# switches on production settings: redirects, secure cookies, HSTS, and a required
# secret key; with it `manage.py check --deploy` is clean.
HTTPS = env_bool("BOTLNEK_HTTPS", default=False)


def _secret_key() -> str:
    """The configured key; without one, a key generated once into the data directory
    serves a single machine, but not a production deployment whose
    processes on other machines must share it."""
    configured = env_str("BOTLNEK_SECRET_KEY")
    if configured:
        return configured
    if HTTPS:
        raise ImproperlyConfigured(
            "BOTLNEK_SECRET_KEY is required with BOTLNEK_HTTPS=1: set it to the same "
            "long random value on every server process (for example the output of "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(50))')"
        )
    path = DATA_DIR / "secret_key"
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env_list("BOTLNEK_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("BOTLNEK_CSRF_TRUSTED_ORIGINS", [])

SECURE_SSL_REDIRECT = HTTPS
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = env_int("BOTLNEK_HSTS_SECONDS", 31_536_000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = HTTPS
if env_bool("BOTLNEK_BEHIND_PROXY", default=False):
    # Trust the proxy's word that the original request was HTTPS.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
X_FRAME_OPTIONS = "DENY"
# The dashboard's own pages: scripts and styles from this server only (htmx is
# vendored), websockets back to it. The admin keeps Django's defaults.
BOTLNEK_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; frame-ancestors 'none'; base-uri 'self'; "
    "form-action 'self'"
)

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "ninja",
    "aggregates",
]

# The JSON API (/api/, /livez, /healthz) and /metrics are served by
# aggregates.api_handler.APIHandler with ApiGatewayMiddleware alone
# (botlnek_site.asgi routes them there); this stack is the dashboard's and the admin's.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "aggregates.middleware.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "botlnek_site.urls"
ASGI_APPLICATION = "botlnek_site.asgi.application"


def _site_templates() -> Path:
    """The site's own templates (base layout, error pages, login, admin branding):
    the top-level templates/, which setup.py makes the package botlnek_site.templates.
    Found through the import system when installed (a wheel, or a checkout installed
    editable), else beside this package in a checkout."""
    try:
        from botlnek_site import templates
    except ImportError:
        checkout = Path(__file__).resolve().parent.parent / "templates"
        if checkout.is_dir():
            return checkout
        raise ImproperlyConfigured(
            "the site's templates (botlnek_site.templates) are not installed"
        ) from None
    return Path(templates.__file__).parent


TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # The site's templates first (they also override the admin's
        # base_site.html); the app's pages ship inside it (aggregates/templates/).
        "DIRS": [_site_templates()],
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


def _sqlite_synchronous() -> str:
    """FULL: a commit is on disk before it is acknowledged, so a power cut cannot
    take back a version a client (or a webhook's receiver) was told of, and its
    position cannot be given to another. NORMAL (WAL's default) trades that for
    speed: bench/results-durability.md measures the difference."""
    value = env_str("BOTLNEK_SQLITE_SYNCHRONOUS", "full").upper()
    if value not in ("FULL", "NORMAL"):
        raise ImproperlyConfigured(
            f"BOTLNEK_SQLITE_SYNCHRONOUS must be full or normal, not {value.lower()!r}"
        )
    return value


# Read whatever the database, so that a bad value fails at start everywhere.
SQLITE_SYNCHRONOUS = _sqlite_synchronous()


def _database() -> dict:
    url = env_str("BOTLNEK_DATABASE_URL")
    if not url:
        url = f"sqlite:///{DATA_DIR / 'botlnek.sqlite3'}"
    try:
        config = dj_database_url.parse(url)
    except ValueError as exc:
        raise ImproperlyConfigured(f"BOTLNEK_DATABASE_URL: {exc}") from None
    engine = config["ENGINE"]
    if engine == "django.db.backends.sqlite3":
        config["OPTIONS"] = {
            # Writers queue for the lock at BEGIN instead of failing mid-transaction.
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": (
                f"PRAGMA journal_mode=WAL; PRAGMA synchronous={SQLITE_SYNCHRONOUS};"
            ),
        }
        config["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}
    elif engine == "django.db.backends.postgresql":
        # A pool, not CONN_MAX_AGE: under ASGI persistent connections leak one per
        # request thread (measured).
        config["CONN_MAX_AGE"] = 0
        # Server-side binding lets psycopg prepare the write path's statements once
        # per pooled connection instead of PostgreSQL planning them on every post.
        config.setdefault("OPTIONS", {})["server_side_binding"] = True
        config["OPTIONS"]["pool"] = {
            "min_size": 1,
            "max_size": env_int("BOTLNEK_DB_POOL_SIZE", 20, minimum=2),
            "timeout": 10,
        }
    else:
        raise ImproperlyConfigured(
            f"BOTLNEK_DATABASE_URL must be sqlite:// or postgres://, not {engine}"
        )
    return config


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Several processes share notifications through Redis. The pub/sub layer never
# drops a message under load and does no blocking reads, so redis-py 8's default
# socket timeout (channels_redis #422) does not affect it. Notifications only say
# "something changed": subscribers read the versions from the database.
REDIS_URL = env_str("BOTLNEK_REDIS_URL")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Live delivery: a subscriber with more frames than this waiting is disconnected
# (1013) and resumes from its position; every so often each process re-reads the
# latest position of the domains it serves, to catch a lost last notification.
BOTLNEK_WS_MAX_PENDING = env_int("BOTLNEK_WS_MAX_PENDING", 1000, minimum=1000)
BOTLNEK_POSITION_CHECK_SECONDS = env_int(
    "BOTLNEK_POSITION_CHECK_SECONDS", 30, minimum=1
)

# Per-token limits, per server process, off unless set: write requests (POST under
# /api/) as a token bucket, "100/s", "6000/m" or "50000/h" (429 + Retry-After past
# it), and open live connections: a token's websockets and SSE streams, a user's
# dashboard sockets (a websocket past it is closed with 1008, a stream is a 429).
BOTLNEK_WRITE_RATE = Rate.parse("BOTLNEK_WRITE_RATE", env_str("BOTLNEK_WRITE_RATE"))
BOTLNEK_WS_MAX_CONNECTIONS_PER_TOKEN = env_int(
    "BOTLNEK_WS_MAX_CONNECTIONS_PER_TOKEN", 0, minimum=0
)
# Subscriptions one /ws/subscribe connection may hold at once.
BOTLNEK_WS_MAX_SUBSCRIPTIONS = env_int("BOTLNEK_WS_MAX_SUBSCRIPTIONS", 100, minimum=1)

# Hosts webhooks may call (aggregates/webhooks/targets.py): names, .domains, IP
# addresses, CIDR networks, and the classes external, loopback, private and *.
# Empty: external (globally routable addresses) only.
BOTLNEK_WEBHOOK_ALLOWED_HOSTS = AllowList.parse(
    env_str("BOTLNEK_WEBHOOK_ALLOWED_HOSTS")
)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"
# Anyone may read the dashboard (never write: it has no forms that change data).
BOTLNEK_PUBLIC_DASHBOARD = env_bool("BOTLNEK_PUBLIC_DASHBOARD", default=False)
# GET /metrics needs a read token for every domain, unless this makes it public
# (for a scraper on a private network that holds no token).
BOTLNEK_PUBLIC_METRICS = env_bool("BOTLNEK_PUBLIC_METRICS", default=False)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
# WhiteNoise serves straight from the app directories (aggregates/static/ and the
# admin's, inside the installed packages): no collectstatic step. STATIC_ROOT only
# has to exist.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

# The API's own limit is 1 MiB (docs/api.md); Django enforces it while reading the body.
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024

LOG_LEVEL = env_str("BOTLNEK_LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "botlnek": {"level": LOG_LEVEL},
        # One JSON line per HTTP request (token names, never secrets); routine
        # ones (lease renewals) at debug.
        "botlnek.requests": {
            "level": (
                ("DEBUG" if LOG_LEVEL == "DEBUG" else "INFO")
                if env_bool("BOTLNEK_REQUEST_LOG", True)
                else "WARNING"
            )
        },
        # botlnek.requests has a line for every request already: Django's own
        # "Bad Request: …" warnings would say each 4xx twice. Its 5xx (with the
        # traceback) stay.
        "django.request": {"level": "ERROR"},
    },
}
