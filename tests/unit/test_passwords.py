"""Password checks: argon2 hashes, plain constant-time compare, a cache, one run per question."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from argon2 import PasswordHasher

from relay.passwords import CachedOnly, NotCached, PasswordChecker, hash_password


class CountingHasher(PasswordHasher):
    """argon2 as configured, counting how often it really runs."""

    runs = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        CountingHasher.runs += 1
        return super().verify(hash, password)


def test_hash_verifies_and_wrong_is_refused() -> None:
    h = hash_password("s3cret")
    checker = PasswordChecker()
    assert checker.verify(h, "s3cret") and not checker.verify(h, "s3creT")
    assert checker.verify("plain", "plain") and not checker.verify("plain", "plaiN")
    assert not checker.verify("", "")


def test_concurrent_identical_checks_run_argon2_once_and_cache_success() -> None:
    h = hash_password("s3cret")
    checker = PasswordChecker()
    checker._hasher = CountingHasher()
    CountingHasher.runs = 0
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: checker.verify(h, "s3cret"), range(20)))
    assert results == [True] * 20
    assert CountingHasher.runs == 1
    assert checker.verify(h, "s3cret") and CountingHasher.runs == 1  # cached


def test_concurrent_wrong_password_refused_for_all_and_not_cached() -> None:
    h = hash_password("s3cret")
    checker = PasswordChecker()
    checker._hasher = CountingHasher()
    CountingHasher.runs = 0
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: checker.verify(h, "guess"), range(20)))
    assert results == [False] * 20
    assert 1 <= CountingHasher.runs <= 20
    runs = CountingHasher.runs
    assert not checker.verify(h, "guess") and CountingHasher.runs == runs + 1  # failures re-checked


def test_cached_only_answers_without_argon2_or_raises() -> None:
    h = hash_password("s3cret")
    checker = PasswordChecker()
    checker._hasher = CountingHasher()
    CountingHasher.runs = 0
    cached = CachedOnly(checker)
    with pytest.raises(NotCached):
        cached.verify(h, "s3cret")  # never verified yet: only argon2 can tell
    with pytest.raises(NotCached):
        cached.verify(h, "guess")  # failures are never cached
    assert CountingHasher.runs == 0
    assert checker.verify(h, "s3cret") and CountingHasher.runs == 1
    assert cached.verify(h, "s3cret") and CountingHasher.runs == 1  # from the cache
    with pytest.raises(NotCached):
        cached.verify(h, "guess")
    assert cached.verify("plain", "plain") and not cached.verify("plain", "other")
    assert not cached.verify("", "anything")
