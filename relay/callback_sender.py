"""Spooled callbacks → the clients' HTTP handlers: POST, retry with backoff, in order per message.

Uses httpx (encode's async HTTP client: typed, maintained, HTTP/1.1 by h11, a mock transport for
fakes). A callback is `sent` on any 2xx answer. Anything else (a refused connection, a timeout,
a 4xx/5xx answer) is retried with backoff until its validity (`callbacks.validity`) ends, then
marked `failed`: the seed service's handlers are scripts that answer 200 once they stored the
data, and a handler that is down or broken for a while must still get every event later.

Exactly once as seen by the handler, except for a request in flight when the daemon stops or
dies: its answer is unknown, so it is sent again after the restart (at-least-once, like SMS).
This task shares nothing with the SMS path but the spool: a slow or dead handler never delays a
submit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from relay.spool import Spool
from relay.spool.model import Callback
from relay.wakeup import Wakeup
from relay.worker import backoff

log = logging.getLogger("relay.callbacks")


@dataclass
class CallbackCounters:
    sent: int = 0
    failed: int = 0
    retried: int = 0


class CallbackSender:
    """Claims due callbacks from the spool and POSTs them, up to `concurrency` at once."""

    def __init__(
        self,
        spool: Spool,
        *,
        timeout: float,
        retry_min: float,
        retry_max: float,
        concurrency: int = 10,
        clock: Callable[[], float] = time.time,
        counters: CallbackCounters | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.spool = spool
        self.timeout = timeout
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.concurrency = concurrency
        self.clock = clock
        self.counters = counters or CallbackCounters()
        self.transport = transport
        self._wakeup = Wakeup()

    def wake(self) -> None:
        self._wakeup.wake()

    async def stop(self) -> None:
        self._wakeup.stop()

    async def run(self) -> None:
        # trust_env=False: callbacks go straight to the URL the account configured, never through
        # a proxy picked up from the daemon's environment.
        async with httpx.AsyncClient(
            timeout=self.timeout,
            transport=self.transport,
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": "sms-relay"},
        ) as client:
            while not self._wakeup.stopping:
                calls = await self.spool.claim_callbacks(self.concurrency, self.clock())
                if not calls:
                    due = await self.spool.next_callback_due()
                    await self._wakeup.nap(due, self.clock(), 5.0)
                    continue
                await asyncio.gather(*(self._send(client, c) for c in calls))

    async def _send(self, client: httpx.AsyncClient, call: Callback) -> None:
        try:
            response = await client.post(
                call.url, content=call.body, headers={"Content-Type": call.content_type}
            )
        except httpx.HTTPError as exc:
            await self._retry(call, f"{type(exc).__name__}: {exc}")
            return
        if 200 <= response.status_code < 300:
            await self.spool.mark_callback_sent(call.id, self.clock())
            self.counters.sent += 1
            log.info("callback sent id=%d stream=%s", call.id, call.stream)
        else:
            await self._retry(call, f"HTTP {response.status_code}")

    async def _retry(self, call: Callback, error: str) -> None:
        now = self.clock()
        delay = backoff(call.attempts, self.retry_min, self.retry_max)
        if now + delay >= call.expires_at:
            await self.spool.mark_callback_failed(call.id, f"expired: {error}", now)
            self.counters.failed += 1
            log.warning("callback failed id=%d stream=%s: %s", call.id, call.stream, error)
            return
        self.counters.retried += 1
        await self.spool.mark_callback_retry(call.id, now + delay, error)
        log.info("callback retry id=%d in %.1fs: %s", call.id, delay, error)
