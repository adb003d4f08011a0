"""The ingest baseline: a bare aiosmtpd server that answers `250` to DATA and does nothing else.

Run in its own process, like the relay: `python -m bench.smtp_sink PORT`.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable

from aiosmtpd.smtp import SMTP, Envelope, Session


class BareSink:
    """The aiosmtpd handler contract at its cheapest: accept every recipient, `250` every mail."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 OK"


async def serve_until_stopped(make: Callable[[], asyncio.Protocol], port: int) -> None:
    """Serve `make()` sessions on 127.0.0.1:`port` until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(make, "127.0.0.1", port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    handler = BareSink()
    await serve_until_stopped(
        lambda: SMTP(handler, hostname="sink.bench", decode_data=False, loop=loop), port
    )


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
