"""Keys derived from JIT_SECRET_KEY: encryption of credentials at rest, token and audit signing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def _derive(secret: str, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"jit/v1", info=purpose).derive(secret.encode())


def _ed25519(secret: str, purpose: bytes) -> tuple[str, Ed25519PrivateKey, dict[str, str]]:
    """An Ed25519 key derived from `secret` for one purpose: (kid, private key, public JWK).
    The kid is the RFC 7638 thumbprint, so it changes when the secret rotates."""
    private = Ed25519PrivateKey.from_private_bytes(_derive(secret, purpose))
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    thumb = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"), sort_keys=True)
    kid = base64.urlsafe_b64encode(hashlib.sha256(thumb.encode()).digest()).rstrip(b"=").decode()
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}
    return kid, private, jwk


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class RequestTokens:
    """Request tokens, made from the request id with a key derived from JIT_SECRET_KEY (purpose
    `request-token`): base64url of HMAC-SHA256(key, "request-token/v1:" + id), 256 bits.

    Nothing secret about a token is stored: the request keeps only its hash (to verify a presented
    token), and the token is made again whenever it is handed back (an Idempotency-Key replay, a
    pipeline asking again for the grant it holds, a gated deployment's job). Without the key a token
    cannot be made or guessed; a deployment with another key makes other tokens. After a rotation
    `recover` tries the previous keys too, so a request made before it gets its own token back.
    """

    def __init__(self, secret: str, previous: list[str] | None = None) -> None:
        self._keys = [_derive(s, b"request-token") for s in [secret, *(previous or [])]]

    @staticmethod
    def _make(key: bytes, request_id: str) -> str:
        mac = hmac.new(key, b"request-token/v1:" + request_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def token(self, request_id: str) -> str:
        """The token of a new request (the current key)."""
        return self._make(self._keys[0], request_id)

    def recover(self, request_id: str, stored_hash: str) -> str | None:
        """The request's token made again with whichever configured key made it (its hash is the
        one stored), or None: made by a key no longer configured, or never derived at all."""
        for key in self._keys:
            token = self._make(key, request_id)
            if hmac.compare_digest(token_hash(token), stored_hash):
                return token
        return None


class Vault:
    """Encrypts credentials at rest (Fernet: AES-128-CBC + HMAC). Old keys still decrypt."""

    def __init__(self, secret: str, previous: list[str] | None = None) -> None:
        fernets = [Fernet(base64.urlsafe_b64encode(_derive(s, b"credentials"))) for s in [secret, *(previous or [])]]
        self._f = MultiFernet(fernets)

    def seal(self, obj: Any) -> str:
        return self._f.encrypt(json.dumps(obj).encode()).decode()

    def open(self, blob: str) -> Any:
        try:
            return json.loads(self._f.decrypt(blob.encode()))
        except InvalidToken:
            raise ValueError("credential cannot be decrypted with the configured keys") from None


class TokenSigner:
    """Signs the `token` backend's JWTs with Ed25519 (EdDSA); the JWKS lists every key in use.

    The signing key is derived from JIT_SECRET_KEY, so every replica signs with the same key and
    the `kid` (RFC 7638 thumbprint) changes when the secret rotates. Previous secrets' public
    keys stay published so their tokens keep verifying until they expire.
    """

    def __init__(self, secret: str, previous: list[str] | None = None, issuer: str = "jit") -> None:
        self.issuer = issuer.rstrip("/")
        self._keys = [self._key(s) for s in [secret, *(previous or [])]]
        self.kid, self._private, _ = self._keys[0]

    @staticmethod
    def _key(secret: str) -> tuple[str, Ed25519PrivateKey, dict[str, str]]:
        return _ed25519(secret, b"token-signing")

    def jwks(self) -> dict[str, Any]:
        return {"keys": [jwk for _, _, jwk in self._keys]}

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode({"iss": self.issuer, **claims}, self._private, algorithm="EdDSA", headers={"kid": self.kid})

    def verify(self, token: str) -> dict[str, Any]:
        """Decode a token this bot issued (any published key). Raises jwt.InvalidTokenError."""
        kid = jwt.get_unverified_header(token).get("kid")
        for k, private, _ in self._keys:
            if k == kid:
                return jwt.decode(
                    token,
                    private.public_key(),
                    algorithms=["EdDSA"],
                    issuer=self.issuer,
                    options={"require": ["exp", "jti", "sub"], "verify_aud": False},
                )
        raise jwt.InvalidKeyError("unknown kid")


class AuditSigner:
    """Signs the audit chain with Ed25519 and seals audit events on their way through the outbox.

    Its own key (purpose `audit-signing`, not the token key) is derived from JIT_SECRET_KEY, so
    every replica signs alike and the key rotates with the secret. Previous secrets' public keys
    stay in `jwks()` so what they signed keeps verifying. The seal is an HMAC (purpose
    `audit-outbox`): only a holder of the secret can make an outbox item jit will chain as itself.
    """

    def __init__(self, secret: str, previous: list[str] | None = None) -> None:
        secrets_ = [secret, *(previous or [])]
        self._keys = [_ed25519(s, b"audit-signing") for s in secrets_]
        self.kid, self._private, _ = self._keys[0]
        self._seal_keys = [_derive(s, b"audit-outbox") for s in secrets_]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [jwk for _, _, jwk in self._keys]}

    def sign(self, message: bytes) -> str:
        """Ed25519 signature of `message` with the current key, base64url without padding."""
        return base64.urlsafe_b64encode(self._private.sign(message)).rstrip(b"=").decode()

    def seal(self, data: bytes) -> str:
        return hmac.new(self._seal_keys[0], data, hashlib.sha256).hexdigest()

    def sealed(self, data: bytes, seal: str) -> bool:
        """Was `data` sealed with the current or a previous secret?"""
        return any(hmac.compare_digest(hmac.new(k, data, hashlib.sha256).hexdigest(), seal) for k in self._seal_keys)
