"""Secrets at rest: AES-GCM, one key derived (HKDF) per use from the key material.

- The environment's credential keeps its token under ``TOKEN_ENCRYPTION_KEY`` (or
  ``TOKEN_ENCRYPTION_KEY_FILE``) or, when none is set, under a key derived from its client
  secret, so a rotated secret simply forces a new token. Its account and client ids are the
  associated data, so a row copied to another credential does not decrypt.
- Whatever the registry keeps (:mod:`worker.credentials`: secrets, refresh tokens, and the
  access tokens of registered credentials) needs the encryption key: a key derived from a
  stored secret would be circular. Each ciphertext is bound to its table, row id and column.

A token encrypted under another key reads as no token.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from worker import errors, oauth
from worker.config import Settings
from worker.models import Credential

NONCE_BYTES = 12


class TokenCipher:
    """Encrypts and decrypts one secret's value; the key is derived at each use, so a secret
    or key file rewritten at run time takes effect at once."""

    def __init__(self, material: Callable[[], str], aad: bytes) -> None:
        self._material = material
        self._aad = aad

    @classmethod
    def for_environment(cls, settings: Settings, account_id: str, client_id: str) -> TokenCipher:
        """The environment credential's token: under the encryption key, else its secret."""

        def material() -> str:
            return settings.read_encryption_key() or settings.read_client_secret()

        return cls(material, f"{account_id}:{client_id}".encode())

    @classmethod
    def for_row(cls, settings: Settings, table: str, row_id: int, column: str) -> TokenCipher:
        """A value the registry keeps in ``table``.``column`` of row ``row_id``: under the
        encryption key only (ConfigurationError naming it when unset)."""
        return cls(lambda: require_key(settings), f"{table}:{row_id}:{column}".encode())

    def write(self, row: Credential, token: oauth.AccessToken) -> None:
        """Put ``token`` on the row: encrypted, with its digest (for compare-and-swap)."""
        row.token_ciphertext = self.encrypt(token.value)
        row.token_sha256 = sha256(token.value)
        row.token_expires_at, row.token_fetched_at = token.expires_at, token.fetched_at

    def read(self, row: Credential, now: datetime, monotonic: float) -> oauth.AccessToken | None:
        """The row's token, or None. ``now`` is the database's clock when the row was read and
        ``monotonic`` this process's clock just before: the expiry becomes a monotonic
        deadline without the host's wall clock."""
        if not row.token_ciphertext or row.token_expires_at is None or row.token_fetched_at is None:
            return None
        value = self.decrypt(row.token_ciphertext)
        if value is None:
            return None
        return oauth.AccessToken(
            value=value,
            expires_at=row.token_expires_at,
            fetched_at=row.token_fetched_at,
            expires_monotonic=monotonic + (row.token_expires_at - now).total_seconds(),
        )

    def encrypt(self, value: str) -> bytes:
        """``nonce || ciphertext`` of ``value``."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        return nonce + self._aead().encrypt(nonce, value.encode(), self._aad)

    def decrypt(self, blob: bytes) -> str | None:
        """The token, or None when it was encrypted under another key."""
        try:
            plain = self._aead().decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], self._aad)
        except InvalidTag:
            return None
        return plain.decode()

    def open(self, blob: bytes | None) -> str:
        """A stored secret, decrypted; ConfigurationError when it does not decrypt (the
        encryption key changed since it was stored)."""
        value = self.decrypt(blob) if blob else None
        if value is None:
            raise errors.ConfigurationError(
                "TOKEN_ENCRYPTION_KEY",
                "does not decrypt a stored secret: was it changed since the secret was stored?",
            )
        return value

    def _aead(self) -> AESGCM:
        material = self._material()
        key = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=b"zoom-worker token store",
            info=self._aad,
        ).derive(material.encode())
        return AESGCM(key)


def require_key(settings: Settings) -> str:
    """The encryption key, required once a secret is kept in the database."""
    key = settings.read_encryption_key()
    if key is None:
        raise errors.ConfigurationError(
            "TOKEN_ENCRYPTION_KEY",
            "is required once a secret is stored in the database (credentials, apps): "
            "set it (or TOKEN_ENCRYPTION_KEY_FILE) to a long random value, the same on every host",
        )
    return key


def secret_digest(settings: Settings) -> str:
    """A salted digest of the environment's client secret ("" when it cannot be read)."""
    try:
        secret = settings.read_client_secret()
    except errors.ConfigurationError:
        return ""
    return hashlib.sha256(b"zoom-worker secret digest:" + secret.encode()).hexdigest()[:32]


def sha256(value: str) -> str:
    """The digest a stored token is known by (never the token itself)."""
    return hashlib.sha256(value.encode()).hexdigest()
