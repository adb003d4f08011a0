"""Prometheus metrics (prefix `sms_relay_`) and the /metrics + /healthz HTTP endpoint (SPEC §10).

The components keep plain counters; a collector reads them at scrape time, so the hot paths
never touch prometheus-client and tests can read the same numbers directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from relay.callback_sender import CallbackCounters
from relay.mailer import MailCounters
from relay.notifier import NoticeCounters
from relay.pruner import PruneCounters
from relay.smtp_front import IntakeCounters
from relay.worker import DispatchCounters

log = logging.getLogger("relay.metrics")

BIND_STATES = ("down", "connecting", "binding", "bound", "unbinding", "stopped")


class BindView(Protocol):
    """What the collector reads of an upstream bind (relay.smpp.link.UpstreamLink)."""

    @property
    def name(self) -> str: ...

    @property
    def bound(self) -> bool: ...

    @property
    def state(self) -> str: ...

    @property
    def reconnects(self) -> int: ...


class WorkerView(Protocol):
    """What the metrics read of relay.smtp_workers.SmtpWorkers."""

    @property
    def alive(self) -> int: ...

    restarts: int


class RelayCollector(Collector):
    """Reads the relay's counters and the spool depth when Prometheus scrapes."""

    def __init__(
        self,
        *,
        intake: IntakeCounters | Callable[[], IntakeCounters],  # a function: summed at scrape
        dispatch: DispatchCounters,
        mail: MailCounters,
        links: Sequence[BindView],
        callbacks: CallbackCounters | None = None,
        notices: NoticeCounters | None = None,
        pruned: PruneCounters | None = None,
        workers: WorkerView | None = None,
    ) -> None:
        self.workers = workers  # smtp.workers > 0: the SMTP worker processes
        self.pruned = pruned or PruneCounters()
        self.callbacks = callbacks or CallbackCounters()
        self.notices = notices or NoticeCounters()
        self._intake = intake
        self.dispatch = dispatch
        self.mail = mail
        self.links = links
        self.spool_depth: dict[str, int] = {}  # refreshed by the HTTP handler before a scrape
        self.oldest_due: float | None = None  # not_before of the earliest queued job

    @property
    def intake(self) -> IntakeCounters:
        return self._intake if isinstance(self._intake, IntakeCounters) else self._intake()

    def collect(self) -> Iterable[Metric]:
        intake = self.intake  # once per scrape (with SMTP workers: a sum)
        p = "sms_relay_"
        yield CounterMetricFamily(p + "smtp_sessions", "SMTP sessions opened", intake.sessions)
        mails = CounterMetricFamily(
            p + "mails", "Requests received, by outcome and error code", labels=["outcome", "code"]
        )
        mails.add_metric(["accepted", "0"], intake.accepted)
        for code, n in sorted(intake.refused.items()):
            mails.add_metric(["refused", str(code)], n)
        mails.add_metric(["tempfail", "0"], intake.temp_failures)
        yield mails
        limited = CounterMetricFamily(
            p + "rate_limited",
            "Requests over a rate or cost guard, by scope (account, sender)",
            labels=["scope"],
        )
        for scope in ("account", "sender"):
            limited.add_metric([scope], intake.rate_limited.get(scope, 0))
        yield limited
        yield CounterMetricFamily(
            p + "smtp_auth_failures", "Failed SMTP AUTH attempts", intake.auth_failures
        )
        if self.workers is not None:
            yield GaugeMetricFamily(
                p + "smtp_workers", "SMTP worker processes running", self.workers.alive
            )
            yield CounterMetricFamily(
                p + "smtp_worker_restarts",
                "SMTP worker processes started again after they exited",
                self.workers.restarts,
            )
        parts = CounterMetricFamily(p + "sms_parts", "SMS parts by result", labels=["result"])
        parts.add_metric(["queued"], intake.parts_queued)
        parts.add_metric(["submitted"], self.dispatch.submitted)
        parts.add_metric(["delivered"], self.dispatch.delivered)
        parts.add_metric(["undeliverable"], self.dispatch.undeliverable)
        parts.add_metric(["failed"], self.dispatch.failed)
        parts.add_metric(["expired"], self.dispatch.expired)
        parts.add_metric(["retried"], self.dispatch.retried)
        yield parts
        yield CounterMetricFamily(
            p + "throttled", "Throttling answers from the upstream", self.dispatch.throttled
        )
        receipts = CounterMetricFamily(p + "receipts", "Delivery receipts by stat", labels=["stat"])
        for stat, n in sorted(self.dispatch.receipts.items()):
            receipts.add_metric([stat], n)
        yield receipts
        lat = self.dispatch.latency
        hist = HistogramMetricFamily(p + "submit_latency_seconds", "submit_sm → submit_sm_resp")
        hist.add_metric([], lat.cumulative(), lat.total)
        yield hist
        e2e = self.dispatch.end_to_end
        hist = HistogramMetricFamily(
            p + "end_to_end_seconds", "Mail accepted (250) → submit_sm_resp OK, per SMS part"
        )
        hist.add_metric([], e2e.cumulative(), e2e.total)
        yield hist
        depth = GaugeMetricFamily(p + "spool_jobs", "Spooled SMS jobs by state", labels=["state"])
        for state, n in sorted(self.spool_depth.items()):
            depth.add_metric([state], n)
        yield depth
        due = self.oldest_due
        yield GaugeMetricFamily(
            p + "spool_oldest_due_seconds",
            "Seconds the longest-waiting due SMS job has been due (0: none)",
            value=max(0.0, time.time() - due) if due is not None else 0.0,
        )
        bound = GaugeMetricFamily(p + "bind_up", "1 when the bind is bound", labels=["bind"])
        for i, link in enumerate(self.links):
            bound.add_metric([str(i)], 1 if link.bound else 0)
        yield bound
        states = GaugeMetricFamily(
            p + "bind_state", "1 for the state each bind is in", labels=["bind", "state"]
        )
        for i, link in enumerate(self.links):
            for state in BIND_STATES:
                states.add_metric([str(i), state], 1 if link.state == state else 0)
        yield states
        reconnects = CounterMetricFamily(
            p + "bind_reconnects", "Connections lost or refused, then retried", labels=["bind"]
        )
        for i, link in enumerate(self.links):
            reconnects.add_metric([str(i)], link.reconnects)
        yield reconnects
        replies = CounterMetricFamily(p + "reply_mails", "Reply mails by result", labels=["result"])
        replies.add_metric(["sent"], self.mail.sent)
        replies.add_metric(["failed"], self.mail.failed)
        replies.add_metric(["retried"], self.mail.retried)
        yield replies
        calls = CounterMetricFamily(
            p + "callbacks", "Status/MO callbacks to clients by result", labels=["result"]
        )
        calls.add_metric(["queued"], self.notices.callbacks_queued)
        calls.add_metric(["sent"], self.callbacks.sent)
        calls.add_metric(["failed"], self.callbacks.failed)
        calls.add_metric(["retried"], self.callbacks.retried)
        yield calls
        notices = CounterMetricFamily(
            p + "notices", "Final message states and complete MO SMS seen", labels=["kind"]
        )
        notices.add_metric(["status"], self.notices.status)
        notices.add_metric(["mo"], self.notices.mo)
        notices.add_metric(["mo_incomplete"], self.notices.mo_incomplete)
        yield notices
        notice_mails = CounterMetricFamily(
            p + "notice_mails", "Status and MO mails queued", labels=["kind"]
        )
        notice_mails.add_metric(["status"], self.notices.status_mailed)
        notice_mails.add_metric(["mo"], self.notices.mo_mailed)
        yield notice_mails
        pruned = CounterMetricFamily(
            p + "spool_pruned_rows",
            "Spool rows deleted by retention (spool.keep_days and the SPEC §5 windows), by table",
            labels=["table"],
        )
        for table, n in sorted(self.pruned.deleted.items()):
            pruned.add_metric([table], n)
        yield pruned


async def serve_http(
    host: str,
    port: int,
    registry: CollectorRegistry,
    health: Callable[[], Awaitable[tuple[bool, dict[str, object]]]],
    before_scrape: Callable[[], Awaitable[None]],
) -> asyncio.Server:
    """A minimal HTTP/1.0 server for two GET paths; enough for Prometheus and probes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            if path == "/metrics":
                await before_scrape()
                body = await asyncio.to_thread(generate_latest, registry)
                status, ctype = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
            elif path == "/healthz":
                ok, detail = await health()
                body = json.dumps(detail).encode()
                status = "200 OK" if ok else "503 Service Unavailable"
                ctype = "application/json"
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            head = (
                f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port)
