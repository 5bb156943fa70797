"""API keys: their format, how they are stored, and the backend that checks them.

A key looks like ``tm_<prefix>_<secret>``: ``prefix`` is 12 hex characters (6 random bytes) that
find the stored record, ``secret`` is 32 random bytes (43 URL-safe base64 characters). Only
``HMAC-SHA256(server secret, key)`` is stored. A key carries 256 bits of entropy, so a fast
keyed hash is as strong as a slow password hash here (nobody can enumerate 2^256 candidates),
while a slow hash (bcrypt, scrypt, argon2: tens of milliseconds by design) on every request
would cost more than the request itself. The server secret (``TASKMILL_SECRET_KEY`` or one
generated into the database) means a stolen copy of the ``api_keys`` table alone is useless.

Checking a key: parse, look the record up by prefix, compare the HMACs with
:func:`hmac.compare_digest`, refuse a revoked key. A validated key is cached in the process for
:data:`CACHE_TTL` seconds (keyed by its HMAC, never the key), so a revocation takes effect
everywhere within that bound, and at once in the process that revoked it. ``last_used_at`` is
written at most once per :data:`TOUCH_INTERVAL` per key and process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
import uuid
import weakref
from typing import Any

from taskmill.plugin_api import ApiKey
from taskmill.plugin_api import AuthBackend
from taskmill.plugin_api import AuthError
from taskmill.plugin_api import Principal
from taskmill.plugin_api import Role
from taskmill.plugin_api import StorageUnavailable
from taskmill.plugin_api import ValidationError
from taskmill.plugin_api import utcnow
from taskmill_auth.store import auth_store

__all__ = [
    "KEY_PREFIX",
    "CACHE_TTL",
    "TOUCH_INTERVAL",
    "ApiKeyBackend",
    "NewKey",
    "generate_key",
    "parse_key",
    "hash_key",
    "create_api_key",
    "revoke_api_key",
    "credential_from_request",
    "looks_like_jwt",
    "validate_tenant",
    "BOOTSTRAP_SETTING",
    "bootstrap_admin_key",
]

logger = logging.getLogger("taskmill.auth.apikeys")

KEY_PREFIX = "tm"
"""Every key starts ``tm_``, which makes a leaked key easy to recognise (and to scan for)."""

CACHE_TTL = 5.0
"""Seconds a validated key is trusted without asking the database: the revocation delay."""

TOUCH_INTERVAL = 60.0
"""Seconds between two ``last_used_at`` writes for one key in one process."""

CACHE_MAX = 10_000
"""Entries the in-process cache holds at most (it is emptied when full)."""

_KEY_RE = re.compile(r"^tm_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
TENANT_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
BOOTSTRAP_SETTING = "bootstrap_admin_key_id"
BOOTSTRAP_TENANT = "default"


def generate_key() -> tuple[str, str]:
    """A new key and its prefix: ``("tm_<prefix>_<secret>", "<prefix>")``."""
    prefix = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return f"{KEY_PREFIX}_{prefix}_{secret}", prefix


def parse_key(key: str) -> str | None:
    """The prefix of a well-formed key, else None."""
    match = _KEY_RE.match(key)
    return match.group(1) if match else None


def hash_key(server_secret: str, key: str) -> str:
    """HMAC-SHA256 of the key with the server secret, hex (what the database stores)."""
    return hmac.new(server_secret.encode(), key.encode(), hashlib.sha256).hexdigest()


def looks_like_jwt(token: str) -> bool:
    """A JWT has three dot-separated segments; an API key has none."""
    return token.count(".") == 2


def credential_from_request(request: Any) -> tuple[str, str] | None:
    """``("bearer", token)`` from ``Authorization: Bearer``, ``("x-api-key", key)`` from
    ``X-API-Key``, or None when neither is present."""
    header = request.headers.get("Authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return "bearer", token.strip()
    key = request.headers.get("X-API-Key")
    if key and key.strip():
        return "x-api-key", key.strip()
    return None


def validate_tenant(tenant: Any) -> str:
    """A tenant name: 1 to 100 letters, digits, ``_ . : -``.

    Raises:
        ValidationError: anything else.
    """
    if not isinstance(tenant, str) or not TENANT_RE.match(tenant):
        raise ValidationError(
            "invalid tenant", {"tenant": ["1 to 100 characters of letters, digits, '_', '.', ':' and '-'"]}
        )
    return tenant


class NewKey(dict):
    """A created key as the API and the CLI show it once: id, key, tenant, role, name, created_at."""


def create_api_key(runtime: Any, tenant: str, role: Role | str, name: str | None = None) -> NewKey:
    """Create and store a key; return it with its secret (the only time the secret is seen).

    Args:
        runtime: the process's runtime (storage, server secret).
        tenant: the tenant the key acts in.
        role: its role.
        name: a label for people.

    Raises:
        ValidationError: a bad tenant or role.
        StorageUnavailable: nothing was stored.
    """
    validate_tenant(tenant)
    try:
        role = Role(role)
    except ValueError:
        raise ValidationError(
            "invalid role", {"role": [f"one of {', '.join(r.value for r in Role)}"]}
        ) from None
    key, prefix = generate_key()
    record = ApiKey(
        id=str(uuid.uuid4()),
        name=name,
        tenant=tenant,
        role=role,
        key_hash=hash_key(runtime.secret_key, key),
        prefix=prefix,
        created_at=utcnow(),
    )
    auth_store(runtime).keys.create(record)
    logger.info("API key %s created for tenant %s with role %s", record.id, tenant, role.value)
    return NewKey(
        id=record.id, key=key, tenant=tenant, role=role.value, name=name, created_at=record.created_at
    )


def revoke_api_key(runtime: Any, key_id: str) -> bool:
    """Revoke a key; True when it existed and was active. Forgets it in this process's cache."""
    done = auth_store(runtime).keys.revoke(key_id)
    for backend in list(_BACKENDS):
        backend.forget(key_id)
    if done:
        logger.info("API key %s revoked", key_id)
    return done


def bootstrap_admin_key(runtime: Any) -> list[str] | None:
    """On a database that has never had a bootstrap key and has no API key: create an admin key
    for tenant ``default`` and return the lines that show it. Otherwise None.

    The race between two processes starting at once is settled by the database: each proposes
    its key id as the ``bootstrap_admin_key_id`` setting, and only the one whose id was stored
    creates the key. It happens once per database, ever: with every key revoked, make a new one
    with ``taskmill api-keys create``.
    """
    if runtime.settings.auth == "none":
        return None
    if auth_store(runtime).keys.count() > 0:
        return None
    candidate = str(uuid.uuid4())
    winner = runtime.storage.settings.get_or_create(BOOTSTRAP_SETTING, candidate)
    if winner != candidate:
        return None
    key, prefix = generate_key()
    auth_store(runtime).keys.create(
        ApiKey(
            id=candidate,
            name="bootstrap admin",
            tenant=BOOTSTRAP_TENANT,
            role=Role.ADMIN,
            key_hash=hash_key(runtime.secret_key, key),
            prefix=prefix,
            created_at=utcnow(),
        )
    )
    logger.info("bootstrap admin API key %s created", candidate)
    return [
        f"Admin API key: {key}",
        "(shown only this once; send it as 'Authorization: Bearer <key>'. "
        "More keys: taskmill api-keys create --tenant T --role viewer|submitter|operator|admin)",
    ]


_BACKENDS: weakref.WeakSet[ApiKeyBackend] = weakref.WeakSet()
"""Backends of this process, so that a revocation here clears their caches at once."""


class ApiKeyBackend(AuthBackend):
    """Checks ``Authorization: Bearer tm_…`` and ``X-API-Key: tm_…``."""

    name = "apikey"
    priority = 20

    def __init__(self, settings: Any, runtime: Any) -> None:
        super().__init__(settings, runtime)
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()
        self._secret: str | None = None
        _BACKENDS.add(self)

    def _server_secret(self) -> str:
        if self._secret is None:
            self._secret = self.runtime.secret_key
        return self._secret

    def authenticate(self, request: Any) -> Principal | None:
        """The key's principal; None when the request carries no API key (a JWT, nothing).

        Raises:
            AuthError: a malformed, unknown or revoked key.
            StorageUnavailable: the key is not cached and the database does not answer.
        """
        found = credential_from_request(request)
        if found is None:
            return None
        kind, token = found
        if kind == "bearer" and looks_like_jwt(token):
            return None  # the JWT backend's
        prefix = parse_key(token)
        if prefix is None:
            raise AuthError("invalid API key")
        digest = hash_key(self._server_secret(), token)
        record = self._lookup(prefix, digest)
        if record is None:
            raise AuthError("invalid or revoked API key")
        self._touch(record.id)
        return Principal(subject=f"key:{record.id}", tenant=record.tenant, role=record.role, key_id=record.id)

    def _lookup(self, prefix: str, digest: str) -> ApiKey | None:
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        record = auth_store(self.runtime).keys.find(prefix)
        valid = (
            record is not None and hmac.compare_digest(record.key_hash, digest) and record.revoked_at is None
        )
        with self._lock:
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            self._cache[digest] = (now + CACHE_TTL, record if valid else None)
        return record if valid else None

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (it was revoked in this process)."""
        with self._lock:
            for digest, (_, record) in list(self._cache.items()):
                if record is not None and record.id == key_id:
                    del self._cache[digest]

    def _touch(self, key_id: str) -> None:
        now = time.monotonic()
        last = self._touched.get(key_id)
        if last is not None and now - last < TOUCH_INTERVAL:
            return
        self._touched[key_id] = now
        try:
            auth_store(self.runtime).keys.touch(key_id, utcnow())
        except StorageUnavailable as exc:
            logger.warning("last use of API key %s not recorded: %s", key_id, exc)
