"""Env values at rest: sealed with a key of the server's own, gone once a run ends.

A pipeline's env values (passwords, TURN credentials, S3 keys) must wait in the
database until the pipeline is dispatched, and again after a server restart. They are
stored sealed (Fernet: AES-CBC with an HMAC) under a key kept in a file beside the
database (``<db>.key``, mode 0600, made on first start), so that the database file, its
WAL and its backups hold no value in clear. Once a pipeline has ended its values are
replaced by the names alone: the API still says which envs were given.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Final

from cryptography.fernet import Fernet, InvalidToken

log = logging.getLogger(__name__)

SEALED_KEY: Final = "__sealed__"


class SealingError(RuntimeError):
    """The key file cannot be read or made, or sealed values do not open with it."""


class SecretBox:
    """Seals and opens a mapping of env values."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def for_database(cls, db_path: str | Path) -> SecretBox:
        """The box whose key lives beside ``db_path`` (made if missing); an in-memory
        database gets a key that lives as long as the process."""
        if str(db_path) == ":memory:":
            return cls(Fernet.generate_key())
        key_path = Path(f"{db_path}.key")
        try:
            return cls(key_path.read_bytes().strip())
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as err:
            raise SealingError(
                f"cannot use the sealing key {key_path}: {err}; restore the file the "
                "server made, or remove it together with the database"
            ) from None
        key = Fernet.generate_key()
        try:
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return cls(key_path.read_bytes().strip())  # another process made it
        except OSError as err:
            raise SealingError(
                f"cannot make the sealing key {key_path}: {err.strerror}; let the "
                "server write beside its database"
            ) from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
        log.info("made the key that seals env values at rest: %s", key_path)
        return cls(key)

    def seal(self, values: dict[str, str]) -> dict[str, str]:
        if not values:
            return {}
        token = self._fernet.encrypt(json.dumps(values).encode())
        return {SEALED_KEY: token.decode()}

    def open(self, stored: dict[str, Any]) -> dict[str, str]:
        """The values of ``stored``; values stored before sealing pass as they are."""
        if SEALED_KEY not in stored:
            return {str(k): str(v) for k, v in stored.items()}
        try:
            opened: dict[str, str] = json.loads(
                self._fernet.decrypt(stored[SEALED_KEY].encode())
            )
        except (InvalidToken, ValueError):
            raise SealingError(
                "sealed env values do not open with this server's key; the database "
                "and its .key file must stay together"
            ) from None
        return opened


def names_only(values: dict[str, str]) -> dict[str, str]:
    """What is kept of a run's env values once it ended: the names."""
    return dict.fromkeys(values, "")
