"""JWT for service-to-service calls: ``Authorization: Bearer <header.payload.signature>``.

- HS256 with ``TASKMILL_JWT_SECRET`` (at least 32 bytes), RS256 with ``TASKMILL_JWT_PUBLIC_KEY``
  (PEM). The algorithm is chosen by which key is configured, never trusted from the token: a
  token whose ``alg`` has no configured key is refused, so ``alg: none`` and algorithm confusion
  (an HS256 token signed with the RS256 public key as HMAC secret) fail.
- ``exp`` and ``sub`` are required, ``iss`` / ``aud`` are checked when ``TASKMILL_JWT_ISSUER`` /
  ``TASKMILL_JWT_AUDIENCE`` are set, clock skew is bounded by ``TASKMILL_JWT_LEEWAY`` seconds.
- ``tenant`` must be a tenant name and ``role`` one of the four roles.
"""

from __future__ import annotations

import logging
from typing import Any

import jwt

from taskmill.plugin_api import AuthBackend
from taskmill.plugin_api import AuthError
from taskmill.plugin_api import ConfigError
from taskmill.plugin_api import Principal
from taskmill.plugin_api import Role
from taskmill.plugin_api import ValidationError
from taskmill_auth.apikeys import credential_from_request
from taskmill_auth.apikeys import looks_like_jwt
from taskmill_auth.apikeys import validate_tenant

__all__ = ["JwtBackend", "load_public_key"]

logger = logging.getLogger("taskmill.auth.jwt")

REQUIRED_CLAIMS = ["exp", "sub"]


def load_public_key(pem: str) -> Any:
    """The RSA public key of a PEM text.

    Raises:
        ConfigError: not a PEM RSA public key.
    """
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.replace("\\n", "\n").encode())
    except ValueError as exc:
        raise ConfigError({"TASKMILL_JWT_PUBLIC_KEY": f"not a PEM public key: {exc}"}) from None
    if not isinstance(key, RSAPublicKey):
        raise ConfigError({"TASKMILL_JWT_PUBLIC_KEY": "must be an RSA public key (RS256)"})
    return key


class JwtBackend(AuthBackend):
    """Checks ``Authorization: Bearer <JWT>``; leaves every other credential to other backends."""

    name = "jwt"
    priority = 10

    def __init__(self, settings: Any, runtime: Any) -> None:
        super().__init__(settings, runtime)
        self.jwt = runtime.plugin_settings("jwt")
        self.keys: dict[str, Any] = {}
        if self.jwt.secret:
            self.keys["HS256"] = self.jwt.secret
        if self.jwt.public_key:
            self.keys["RS256"] = load_public_key(self.jwt.public_key)
        self.options: dict[str, Any] = {"require": REQUIRED_CLAIMS, "verify_aud": bool(self.jwt.audience)}

    def authenticate(self, request: Any) -> Principal | None:
        """The token's principal; None when the request carries no JWT.

        Raises:
            AuthError: a JWT that is malformed, badly signed, expired, for another issuer or
                audience, or without a valid ``tenant``/``role``/``sub``.
        """
        found = credential_from_request(request)
        if found is None or found[0] != "bearer" or not looks_like_jwt(found[1]):
            return None
        token = found[1]
        if not self.keys:
            raise AuthError("JWTs are not accepted: no TASKMILL_JWT_SECRET or TASKMILL_JWT_PUBLIC_KEY is set")
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError:
            raise AuthError("invalid JWT: malformed") from None
        key = self.keys.get(alg) if isinstance(alg, str) else None
        if key is None:
            raise AuthError(f"invalid JWT: algorithm {str(alg)[:20]!r} is not accepted")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                options=self.options,
                issuer=self.jwt.issuer or None,
                audience=self.jwt.audience or None,
                leeway=self.jwt.leeway,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("invalid JWT: expired") from None
        except jwt.InvalidTokenError as exc:
            raise AuthError(f"invalid JWT: {exc}") from None
        return self._principal(claims)

    @staticmethod
    def _principal(claims: dict[str, Any]) -> Principal:
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 190:
            raise AuthError("invalid JWT: 'sub' must be a non-empty string")
        try:
            tenant = validate_tenant(claims.get("tenant"))
        except ValidationError:
            raise AuthError("invalid JWT: 'tenant' is missing or not a tenant name") from None
        try:
            role = Role(claims.get("role"))
        except ValueError:
            raise AuthError("invalid JWT: 'role' must be viewer, submitter, operator or admin") from None
        return Principal(subject=f"jwt:{sub}", tenant=tenant, role=role)
