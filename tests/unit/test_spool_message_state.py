"""A message's state derived from all its parts (SPEC §9)."""

from __future__ import annotations

import pytest

from relay.spool.model import message_state


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([], ""),
        (["delivered"], "delivered"),
        (["delivered", "delivered", "delivered"], "delivered"),
        (["delivered", "submitted"], "submitted"),  # waiting for the last receipt
        (["delivered", "queued", "submitted"], "queued"),  # a part is still to be sent
        (["sending", "delivered"], "sending"),
        (["delivered", "undeliverable"], "undeliverable"),
        (["expired", "rejected"], "rejected"),
        (["delivered", "expired"], "expired"),
        (["cancelled", "cancelled"], "cancelled"),
    ],
)
def test_message_state_from_parts(parts: list[str], expected: str) -> None:
    assert message_state(parts) == expected
