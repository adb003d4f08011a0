"""Test-suite settings shared by every tier."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# Property tests are derandomized (the same examples every run, so CI is reproducible) and have
# no per-example deadline: on a loaded 2-core CI machine, wall-clock deadlines only add flakes.
settings.register_profile(
    "relay",
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("relay")

# A real PostgreSQL per test module, and the spool fixture run on both backends (issue 10).
from tests.postgres import pg_url, spool_store  # noqa: E402, F401
