"""Account passwords: hashing for the config, constant-time verification (SPEC §4, §10)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from typing import Protocol

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

HASH_PREFIX = "$argon2"
_CACHE_SIZE = 4096


def hash_password(password: str) -> str:
    """An argon2id hash that `password = "..."` in the config accepts."""
    return PasswordHasher().hash(password)


def is_hashed(stored: str) -> bool:
    return stored.startswith(HASH_PREFIX)


class Verifier(Protocol):
    """What the pipeline needs of a password checker."""

    def verify(self, stored: str, presented: str) -> bool: ...


class NotCached(Exception):
    """`CachedOnly.verify` cannot answer without running argon2."""


class _Verification:
    """One argon2 verification in progress, shared by everyone asking the same question."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False


class PasswordChecker:
    """Verifies a presented secret against the stored password or API key.

    Argon2 costs tens of milliseconds by design; a gateway checks the same credentials on every
    mail, so a successful verification is remembered as a MAC of the pair (keyed BLAKE2b with a
    per-process random key, never the secret itself) and later checks of the same pair cost one
    MAC. Failures are
    not cached, so a changed password takes effect immediately and guessing stays expensive.
    """

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._ok: OrderedDict[bytes, None] = OrderedDict()
        self._running: dict[bytes, _Verification] = {}
        self._lock = threading.Lock()  # verify() runs in worker threads (asyncio.to_thread)
        self._hasher = PasswordHasher()

    def _token(self, stored: str, presented: str) -> bytes:
        # Keyed BLAKE2b is a MAC by design (RFC 7693 §2.5); hashlib's own, ≈0.5 µs: OpenSSL 3's
        # HMAC fetches its algorithm on every call (4–5 % of the event loop per mail, py-spy).
        message = stored.encode() + b"\0" + presented.encode("utf-8")
        return hashlib.blake2b(message, key=self._key, digest_size=32).digest()

    def known(self, stored: str, presented: str) -> bool | None:
        """The answer `verify` would give when it needs no argon2 run; None when it does."""
        if not stored:
            return False
        if not is_hashed(stored):
            # Plain passwords are for tests and dry runs; still compared in constant time.
            return hmac.compare_digest(stored.encode("utf-8"), presented.encode("utf-8"))
        token = self._token(stored, presented)
        with self._lock:
            if token in self._ok:
                self._ok.move_to_end(token)
                return True
        return None

    def verify(self, stored: str, presented: str) -> bool:
        answer = self.known(stored, presented)  # empty, plain (constant time) or cached
        if answer is not None:
            return answer
        token = self._token(stored, presented)
        with self._lock:
            if token in self._ok:  # another thread's verification finished meanwhile
                return True
            running = self._running.get(token)
            if running is None:
                running = self._running[token] = _Verification()
                leader = True
            else:
                leader = False
        if not leader:
            # Single flight: N sessions presenting the same credentials while the cache is cold
            # wait for one argon2 run instead of running N (each costs ~64 MiB and ~50 ms).
            running.done.wait()
            return running.ok
        try:
            self._hasher.verify(stored, presented)
            running.ok = True
        except (VerificationError, InvalidHashError):
            running.ok = False
        finally:
            with self._lock:
                if running.ok:
                    self._ok[token] = None
                    if len(self._ok) > _CACHE_SIZE:
                        self._ok.popitem(last=False)
                del self._running[token]
            running.done.set()
        return running.ok


class CachedOnly:
    """A checker's answers that cost no argon2 run; `NotCached` for the others.

    The SMTP front runs the pipeline on the event loop with this (a cached success costs one
    HMAC) and falls back to a worker thread with the real checker when it raises.
    """

    def __init__(self, checker: PasswordChecker) -> None:
        self._checker = checker

    def verify(self, stored: str, presented: str) -> bool:
        answer = self._checker.known(stored, presented)
        if answer is None:
            raise NotCached
        return answer
