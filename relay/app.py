"""The composition root: build every piece from the config, run them in one TaskGroup, stop cleanly.

Stop order (SIGTERM/SIGINT; uvicorn's discipline): stop accepting SMTP connections, let the SMTP
transactions in progress finish, stop claiming jobs and wait for the submits in flight, unbind,
close the spool. A crashed child task ends the whole daemon loudly (systemd restarts it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from relay import notify
from relay.callback_sender import CallbackCounters, CallbackSender
from relay.config import RelayConfig, SmppConfig, load_config
from relay.errors import ConfigError
from relay.logs import Redactor, secrets_of
from relay.mailer import MailCounters, ReplyMailer
from relay.metrics import RelayCollector, serve_http
from relay.notifier import NoticeCounters, NoticeRules, Notifier
from relay.pipeline import IntakeRules, Outcome
from relay.pruner import FIRST_ROUND, PruneCounters, Pruner, prune_rules
from relay.rates import Limits, RateRules
from relay.smpp.link import UpstreamLink
from relay.smpp.simulator import SmscSimulator
from relay.sms.model import SmsProfile
from relay.smtp_front import (
    CommandMailHandler,
    FrontSpool,
    IntakeCounters,
    RelaySMTP,
    smtp_factory,
)
from relay.smtp_workers import SmtpWorkers, listening_copy
from relay.spool import SharedSpool, Spool, spool_for_config
from relay.throughput import ThroughputShare
from relay.worker import DispatchCounters, Dispatcher

log = logging.getLogger("relay.app")

SMTP_DRAIN_SECONDS = 3.0
SUBMIT_DRAIN_SECONDS = 3.0
HEALTH_SPOOL_TIMEOUT = 2.0  # a spool write slower than this is reported as not writable


def intake_rules(cfg: RelayConfig) -> IntakeRules:
    """The pipeline's view of the config (rebuilt on SIGHUP)."""
    s = cfg.smpp
    return IntakeRules(
        accounts={a.login.lower(): a for a in cfg.accounts},
        profile=SmsProfile(
            latin1=s.latin1,
            data_coding_gsm=s.data_coding_gsm,
            data_coding_latin1=s.data_coding_latin1,
            data_coding_ucs2=s.data_coding_ucs2,
            long_sms=s.long_sms,
            udh_ref16=s.udh_ref16,
            dialect=s.dialect,
        ),
        registered_delivery=s.registered_delivery,
        validity=float(cfg.spool.validity),
        reply_sender=cfg.replies.sender,
        hostname=smtp_hostname(cfg),
        replies_enabled=cfg.replies.enabled,
        # Forwarded by the reply mailer: with replies off there is nothing to forward it by.
        postmaster=cfg.smtp.postmaster if cfg.replies.enabled else "",
        limits=cfg.limits,
    )


def notice_rules(cfg: RelayConfig) -> NoticeRules:
    """Issue 8: what final states and MO SMS become (rebuilt on SIGHUP)."""
    return NoticeRules(
        accounts={a.login.lower(): a for a in cfg.accounts},
        domains=tuple(cfg.smtp.domains),
        sender=cfg.replies.sender,
        hostname=smtp_hostname(cfg),
        mail_validity=float(cfg.spool.validity),
        mails_enabled=cfg.replies.enabled,
        mo=cfg.mo,
        callbacks=cfg.callbacks,
    )


def rate_rules(cfg: RelayConfig) -> RateRules:
    """Issue 6's rate and cost guards (rebuilt on SIGHUP)."""
    lim = cfg.limits
    return RateRules(
        account=Limits(lim.account_rate_per_minute, lim.account_parts_per_day),
        sender=Limits(lim.sender_rate_per_minute, lim.sender_parts_per_day),
        tempfail=lim.rate_action == "tempfail",
    )


def queued_work(outcomes: list[Outcome]) -> tuple[bool, bool]:
    """What the SMTP front's stored outcomes queued: (SMS jobs, mails). The front reports a
    mail forwarded to postmaster as no outcomes (a mail, no SMS)."""
    if not outcomes:
        return False, True
    jobs = any(o.accepted and o.request.jobs for o in outcomes)
    return jobs, any(o.request.mails for o in outcomes)


def smtp_front(
    cfg: RelayConfig,
    *,
    spool: FrontSpool,
    on_stored: Callable[[list[Outcome]], None],
    counters: IntakeCounters,
    tls: ssl.SSLContext | None,
    loop: asyncio.AbstractEventLoop,
) -> tuple[CommandMailHandler, Callable[[], RelaySMTP]]:
    """The SMTP front of the config: its handler and the protocol factory for
    `loop.create_server` (in the daemon, or in an SMTP worker process)."""
    handler = CommandMailHandler(
        domains=cfg.smtp.domains,
        rules=intake_rules(cfg),
        spool=spool,
        reject_invalid=cfg.smtp.reject_invalid,
        max_recipients=cfg.smtp.max_recipients,
        on_stored=on_stored,
        counters=counters,
        rates=rate_rules(cfg),
        log_content=cfg.log.content,
    )
    factory = smtp_factory(
        handler,
        hostname=smtp_hostname(cfg),
        max_message_size=cfg.smtp.max_message_size,
        timeout=cfg.smtp.timeout,
        tls_context=tls,
        loop=loop,
        auth_plain_loopback=cfg.smtp.auth_plain_loopback,
    )
    return handler, factory


def smtp_hostname(cfg: RelayConfig) -> str:
    return cfg.smtp.hostname or (cfg.smtp.domains[0] if cfg.smtp.domains else "localhost")


def tls_context(cfg: RelayConfig) -> ssl.SSLContext | None:
    if not (cfg.smtp.tls_cert and cfg.smtp.tls_key):
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cfg.smtp.tls_cert, cfg.smtp.tls_key)
    return ctx


def reload_tls(ctx: ssl.SSLContext | None, cfg: RelayConfig) -> str:
    """SIGHUP: load the (renewed) certificate into the SAME context aiosmtpd holds.

    Connections already in TLS keep their session; new handshakes get the new certificate. The
    pair is first loaded into a scratch context, so a bad file never half-replaces the live one.
    Raises ConfigError when the files do not load; returns what was done, for the log line.
    """
    cert, key = cfg.smtp.tls_cert, cfg.smtp.tls_key
    if ctx is None:
        return "TLS off" if not (cert and key) else "TLS settings need a restart to turn TLS on"
    if not (cert and key):
        return "TLS settings need a restart to turn TLS off; keeping the loaded certificate"
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"smtp.tls_cert/tls_key: cannot load: {exc}") from None
    ctx.load_cert_chain(cert, key)
    return f"TLS certificate reloaded from {cert}"


@dataclass
class Relay:
    """The running daemon; `run()` returns after a clean stop."""

    cfg: RelayConfig
    config_path: Path | None = None
    intake: IntakeCounters = field(default_factory=IntakeCounters)
    dispatch: DispatchCounters = field(default_factory=DispatchCounters)
    mail: MailCounters = field(default_factory=MailCounters)
    callbacks: CallbackCounters = field(default_factory=CallbackCounters)
    notices: NoticeCounters = field(default_factory=NoticeCounters)
    notifier: Notifier | None = None
    pruned: PruneCounters = field(default_factory=PruneCounters)
    pruner: Pruner | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    handler: CommandMailHandler | None = None
    smtp_port: int = 0
    metrics_port: int = 0
    redactor: Redactor | None = None  # the log filter masking secrets; updated on SIGHUP
    tls: ssl.SSLContext | None = None  # the context aiosmtpd holds (reloaded in place)
    workers: SmtpWorkers | None = None  # smtp.workers > 0: the processes that run SMTP
    _extra_servers: list[asyncio.Server] = field(default_factory=list)

    def request_stop(self) -> None:
        if not self._stop.is_set():
            notify.stopping()
        self._stop.set()

    def reload(self) -> None:
        """SIGHUP: re-read accounts and the TLS certificate; a bad config is refused whole and
        the old one kept. Open SMTP connections are untouched: a transaction in progress
        finishes with the rules it started with, the next one uses the new ones."""
        notify.reloading()
        settling: asyncio.Task[None] | None = None
        try:
            if self.config_path is None or (self.handler is None and self.workers is None):
                log.info("SIGHUP: no config file to reload")
                return
            try:
                new = load_config(self.config_path)
                if self.redactor is not None:
                    # Before anything is logged about it: mask old and new secrets alike.
                    self.redactor.update([*self.redactor.secrets, *secrets_of(new)])
                tls_note = reload_tls(self.tls, new)
            except ConfigError as exc:
                log.error("SIGHUP: new config refused, keeping the old one: %s", exc)
                return
            if self.handler is not None:
                self.handler.rules = intake_rules(new)
                self.handler.rates = rate_rules(new)
            if self.workers is not None:  # READY=1 once every worker has the new config
                settling = asyncio.ensure_future(self._workers_reloaded(self.workers, new))
            if self.notifier is not None:
                self.notifier.rules = notice_rules(new)
            if self.pruner is not None:
                self.pruner.rules = prune_rules(new)
            log.info("SIGHUP: reloaded %d account(s); %s", len(new.accounts), tls_note)
        finally:
            if settling is None:
                notify.ready()  # systemd stays "reloading" until it hears READY=1 again

    @staticmethod
    async def _workers_reloaded(workers: SmtpWorkers, new: RelayConfig) -> None:
        try:
            await workers.reload(new)
        finally:
            notify.ready()

    async def run(self, *, on_ready: Callable[[Relay], None] | None = None) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        spool = spool_for_config(cfg)
        await spool.open()
        try:
            recovered = await spool.recover()
            if recovered:
                log.warning("recovered %d job(s) left in flight by the last run", recovered)
            await self._run_with_spool(spool, loop, on_ready)
        finally:
            await spool.close()

    async def _run_with_spool(
        self,
        spool: Spool,
        loop: asyncio.AbstractEventLoop,
        on_ready: Callable[[Relay], None] | None,
    ) -> None:
        cfg = self.cfg
        simulator: SmscSimulator | None = None
        smpp_cfg: SmppConfig = cfg.smpp
        if cfg.virtual_smsc:
            simulator = SmscSimulator(host="127.0.0.1", port=0)
            await simulator.start()
            smpp_cfg = cfg.smpp.model_copy(update={"host": "127.0.0.1", "port": simulator.port})
            log.warning(
                "smpp.host is empty: using the built-in virtual SMSC on 127.0.0.1:%d "
                "(nothing leaves this machine)",
                simulator.port,
            )
        if smpp_cfg.throughput_total > 0:
            # Issue 10: alone (SQLite) the node takes the whole total; on a shared spool the
            # heartbeat below sets its share before the first submit.
            share = smpp_cfg.throughput_total / smpp_cfg.binds
            smpp_cfg = smpp_cfg.model_copy(update={"throughput": share})
        try:
            dispatcher = Dispatcher(
                spool,
                [],
                window=smpp_cfg.window,
                retry_min=cfg.spool.retry_min,
                retry_max=cfg.spool.retry_max,
                receipt_id_format=smpp_cfg.receipt_id_format,
                counters=self.dispatch,
            )
            links = [
                UpstreamLink(smpp_cfg, name=f"bind-{i}", on_deliver=dispatcher.on_deliver)
                for i in range(smpp_cfg.binds)
            ]
            dispatcher.links = list(links)
            dispatcher.capacity = smpp_cfg.window * len(links)
            mailer = ReplyMailer(
                spool,
                smarthost=cfg.replies.smarthost_address,
                timeout=cfg.replies.timeout,
                retry_min=cfg.spool.retry_min,
                retry_max=cfg.spool.retry_max,
                counters=self.mail,
            )

            sender = CallbackSender(
                spool,
                timeout=cfg.callbacks.timeout,
                retry_min=cfg.callbacks.retry_min,
                retry_max=cfg.callbacks.retry_max,
                concurrency=cfg.callbacks.concurrency,
                counters=self.callbacks,
            )

            def queued() -> None:
                mailer.wake()
                sender.wake()

            notifier = Notifier(spool, notice_rules(cfg), on_queued=queued, counters=self.notices)
            self.notifier = notifier
            dispatcher.on_notice = notifier.wake
            every = cfg.spool.prune_interval
            pruner = Pruner(
                spool,
                prune_rules(cfg),
                every=every,
                first=min(FIRST_ROUND, every),
                counters=self.pruned,
            )
            self.pruner = pruner

            def stored(jobs: bool, mails: bool) -> None:
                # Only what has new work: a wake costs the woken loop a spool query or two,
                # and under load most mails queue SMS and no reply (test = 0).
                if jobs:
                    dispatcher.wake()
                if mails:
                    mailer.wake()

            def changed() -> None:
                stored(True, True)
                sender.wake()

            shares: ThroughputShare | None = None
            if isinstance(spool, SharedSpool):  # another node queued work (LISTEN/NOTIFY)
                spool.on_change(changed)
                if smpp_cfg.throughput_total > 0:
                    shares = ThroughputShare(
                        spool,
                        links,
                        total=smpp_cfg.throughput_total,
                        interval=cfg.spool.heartbeat,
                    )
                    await shares.beat()  # this node's share before its first submit

            self.tls = tls_context(cfg)
            if cfg.smtp.workers:
                server = await self._start_workers(spool, cfg, stored)
            else:
                server = await self._serve_smtp(spool, cfg, loop, stored)
            http: asyncio.Server | None = None
            if cfg.metrics.enabled:
                registry = CollectorRegistry()
                collector = RelayCollector(
                    intake=self.intake if self.workers is None else self.workers.total,
                    dispatch=self.dispatch,
                    mail=self.mail,
                    links=links,
                    callbacks=self.callbacks,
                    notices=self.notices,
                    pruned=self.pruned,
                    workers=self.workers,
                )
                registry.register(collector)

                async def refresh() -> None:
                    collector.spool_depth = await spool.counts()
                    collector.oldest_due = await spool.next_due()

                async def health() -> tuple[bool, dict[str, object]]:
                    # A real write (heartbeat upsert, committed): a full disk, a read-only
                    # mount or a locked database all show here, not only a missing file.
                    spool_error = ""
                    try:
                        await asyncio.wait_for(spool.touch(time.time()), HEALTH_SPOOL_TIMEOUT)
                    except Exception as exc:  # any failure means "not writable"
                        spool_error = f"{type(exc).__name__}: {exc}"
                    binds = {link.name: link.state for link in links}
                    up = sum(link.bound for link in links)
                    ok = not spool_error and up > 0
                    detail: dict[str, object] = {
                        "ok": ok,
                        "spool_writable": not spool_error,
                        "binds_up": up,
                        "binds": binds,
                        "virtual_smsc": simulator is not None,
                    }
                    if self.workers is not None:  # none alive: no mail can come in
                        detail["smtp_workers"] = self.workers.alive
                        detail["ok"] = ok = ok and self.workers.alive > 0
                    if spool_error:
                        detail["spool_error"] = spool_error
                    return ok, detail

                http = await serve_http(
                    cfg.metrics.host, cfg.metrics.port, registry, health, refresh
                )
                self.metrics_port = http.sockets[0].getsockname()[1]
            log.info(
                "listening for SMTP on %s:%d (domains: %s)",
                cfg.smtp.host,
                self.smtp_port,
                ", ".join(cfg.smtp.domains),
            )
            async with asyncio.TaskGroup() as tg:
                link_tasks = [tg.create_task(link.run(), name=link.name) for link in links]
                dispatch_task = tg.create_task(dispatcher.run(), name="dispatcher")
                mail_task = tg.create_task(mailer.run(), name="mailer")
                notice_task = tg.create_task(notifier.run(), name="notifier")
                callback_task = tg.create_task(sender.run(), name="callbacks")
                prune_task = tg.create_task(pruner.run(), name="pruner")
                share_task = (
                    tg.create_task(shares.run(), name="throughput-share")
                    if shares is not None
                    else None
                )
                self._install_signals(loop)
                notify.ready()
                notify.status(f"SMTP {cfg.smtp.host}:{self.smtp_port}, {len(links)} bind(s)")
                interval = notify.watchdog_interval()
                if interval is not None:
                    tg.create_task(self._watchdog(interval), name="watchdog")
                if on_ready is not None:
                    on_ready(self)
                await self._stop.wait()
                log.info("stopping: no new SMTP connections")
                server.close()
                for extra in self._extra_servers:
                    extra.close()
                if http is not None:
                    http.close()
                await self._drain_smtp(server)
                await dispatcher.stop()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(dispatch_task), SUBMIT_DRAIN_SECONDS)
                dispatch_task.cancel()
                await asyncio.gather(*(link.stop(timeout=1.0) for link in links))
                # Notices and callbacks after the links: receipts that came in while unbinding
                # are stored; what is not settled or sent now stays in the spool for next start.
                pruner.stop()
                await notifier.stop()
                await mailer.stop()
                await sender.stop()
                if shares is not None:
                    shares.stop()
                beats = [share_task] if share_task is not None else []
                tasks = (*link_tasks, notice_task, mail_task, callback_task, prune_task, *beats)
                for task in tasks:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(task), 1.0)
                    task.cancel()
            log.info("stopped")
        finally:
            if simulator is not None:
                await simulator.stop()

    async def _serve_smtp(
        self,
        spool: Spool,
        cfg: RelayConfig,
        loop: asyncio.AbstractEventLoop,
        stored: Callable[[bool, bool], None],
    ) -> asyncio.Server:
        """The SMTP front in this process (`smtp.workers = 0`)."""
        self.handler, factory = smtp_front(
            cfg,
            spool=spool,
            on_stored=lambda outcomes: stored(*queued_work(outcomes)),
            counters=self.intake,
            tls=self.tls,
            loop=loop,
        )
        tls = self.tls
        server = await loop.create_server(factory, host=cfg.smtp.host, port=cfg.smtp.port)
        if cfg.smtp.tls_port and tls is not None:
            # Implicit TLS (RFC 8314): the same sessions, encrypted from the first byte.
            smtps = await loop.create_server(
                factory, host=cfg.smtp.host, port=cfg.smtp.tls_port, ssl=tls
            )
            self._extra_servers.append(smtps)
        self.smtp_port = server.sockets[0].getsockname()[1]
        return server

    async def _start_workers(
        self, spool: Spool, cfg: RelayConfig, stored: Callable[[bool, bool], None]
    ) -> asyncio.Server:
        """`smtp.workers` = N: N processes accept SMTP (relay.smtp_workers), this one spools.

        Each worker gets its own listening sockets, bound here to the SMTP address with
        SO_REUSEPORT: the kernel spreads new connections over them (one shared socket would let
        the process that wakes first accept a whole burst: asyncio accepts up to its backlog per
        wakeup). The servers created here are bound only and never serve in this process (the
        first one is returned, for the stop); the workers accept on listening copies."""
        loop = asyncio.get_running_loop()

        def refuse() -> asyncio.Protocol:
            raise RuntimeError("the SMTP workers accept connections, not the daemon")

        ports = {False: cfg.smtp.port, True: cfg.smtp.tls_port}
        wanted = [False, True] if cfg.smtp.tls_port and self.tls is not None else [False]
        per_worker: list[list[tuple[socket.socket, bool]]] = []
        servers: list[asyncio.Server] = []
        for _ in range(cfg.smtp.workers):
            listeners: list[tuple[socket.socket, bool]] = []
            for implicit_tls in wanted:
                bound = await loop.create_server(
                    refuse,
                    host=cfg.smtp.host,
                    port=ports[implicit_tls],
                    reuse_port=True,
                    start_serving=False,
                )
                servers.append(bound)
                listeners += [(listening_copy(s), implicit_tls) for s in bound.sockets]
                # port 0: the next workers bind the port the first one got
                ports[implicit_tls] = listeners[-1][0].getsockname()[1]
            per_worker.append(listeners)
        self._extra_servers += servers[1:]
        self.smtp_port = per_worker[0][0][0].getsockname()[1]
        self.workers = SmtpWorkers(spool, cfg, per_worker, on_stored=stored)
        await self.workers.start()
        return servers[0]

    async def _watchdog(self, interval: float) -> None:
        """systemd WatchdogSec: ping at half the interval while the loop is alive."""
        while not self._stop.is_set():
            notify.watchdog()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval / 2)

    async def _drain_smtp(self, server: asyncio.Server) -> None:
        """Let SMTP transactions in progress finish (bounded), then close the rest."""
        if self.workers is not None:  # each worker does the same as below, then exits
            await self.workers.stop()
            return
        assert self.handler is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.handler.drain(), SMTP_DRAIN_SECONDS)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 0.5)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, self.request_stop)
            loop.add_signal_handler(signal.SIGINT, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, self.reload)
