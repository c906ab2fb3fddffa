"""The access token at rest, on the ``credentials`` row: AES-GCM under ``TOKEN_ENCRYPTION_KEY``
or, when none is set, a key derived (HKDF) from the client secret, so a rotated secret simply
forces a new token.

The account and client ids are bound in as associated data, so a row copied to another
credential does not decrypt. A token encrypted under another key reads as no token.
"""

from __future__ import annotations

import hashlib
import secrets
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
    """Encrypts and decrypts one credential's token; the key is derived at each use, so a
    secret file rewritten at run time takes effect at once."""

    def __init__(self, settings: Settings, account_id: str, client_id: str) -> None:
        self._settings = settings
        self._aad = f"{account_id}:{client_id}".encode()

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

    def secret_digest(self) -> str:
        """A salted digest of the client secret in force ("" when it cannot be read)."""
        try:
            secret = self._settings.read_client_secret()
        except errors.ConfigurationError:
            return ""
        return hashlib.sha256(b"zoom-worker secret digest:" + secret.encode()).hexdigest()[:32]

    def _aead(self) -> AESGCM:
        settings = self._settings
        material = (
            settings.TOKEN_ENCRYPTION_KEY.get_secret_value()
            if settings.TOKEN_ENCRYPTION_KEY is not None
            else settings.read_client_secret()
        )
        key = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=b"zoom-worker token store",
            info=self._aad,
        ).derive(material.encode())
        return AESGCM(key)


def sha256(value: str) -> str:
    """The digest a stored token is known by (never the token itself)."""
    return hashlib.sha256(value.encode()).hexdigest()
