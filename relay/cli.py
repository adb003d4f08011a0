"""The `sms-relay` command line (SPEC §10): serve, check-config, hash-password, smsc-sim, …

Exit codes (the same for every command; `sms-relay --help` prints them):
  0  success
  1  runtime failure (cannot connect, spool error, temporary SMTP failure)
  2  bad usage or a bad config (argparse uses 2 for usage errors as well)
  3  not found (`status`, `retry`, `cancel`: no such request, or nothing to change)
  4  refused: the relay answered ERROR = n (`send`)
  5  pending: accepted, but not yet submitted upstream within `--wait` (`send`)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import sys
from pathlib import Path

from relay.config import RelayConfig, load_config
from relay.errors import ConfigError, RelayError
from relay.spool.model import JobView

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_NOT_FOUND = 3
EXIT_REFUSED = 4
EXIT_PENDING = 5

EXIT_CODES_HELP = """exit codes:
  0  success
  1  runtime failure (relay or spool unreachable, temporary SMTP failure)
  2  bad usage or bad config (the message says which key is wrong)
  3  not found: no such request id, or nothing in it to retry/cancel
  4  refused: the relay answered ERROR = n (send)
  5  pending: accepted, not yet submitted upstream within --wait (send)"""

log = logging.getLogger("relay.cli")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sms-relay",
        description="E-mail-to-SMS gateway: an SMTP server that forwards mail as SMS over SMPP. "
        "Run `sms-relay COMMAND --help` for each command's options.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "-c",
            "--config",
            type=Path,
            help="TOML config file (default: none; the embedded defaults and SMS_RELAY_* "
            "environment variables apply)",
        )

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help,
            description=description,
            epilog=EXIT_CODES_HELP,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    sp = command(
        "serve",
        "run the daemon in the foreground",
        "Run the relay: SMTP server, spool, dispatcher, SMPP binds, /metrics and /healthz. "
        "Logs go to stderr. SIGTERM/SIGINT stop it cleanly; SIGHUP reloads accounts and the "
        "TLS certificate (a bad new config is refused and the old one kept).",
    )
    with_config(sp)
    sp = command(
        "check-config",
        "validate a config file; non-zero exit when wrong",
        "Load the config (TOML + SMS_RELAY_* environment) and the TLS files, and print a "
        "one-line summary. Run it before `systemctl reload sms-relay`.",
    )
    with_config(sp)
    sp = sub.add_parser(
        "hash-password",
        help="print an argon2 hash to use as an account password in the config",
        description="Reads the password from stdin (or asks for it on a terminal) and prints "
        'a hash for `password = "..."` in [[accounts]].',
    )
    sp = sub.add_parser("smsc-sim", help="run the built-in SMSC simulator (SMPP server)")
    sp.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=2775, help="listen port (default 2775)")
    sp.add_argument("--json", action="store_true", help="print each SMS as a JSON line")
    sp.add_argument(
        "--receipt-stat", default="DELIVRD", help="stat of the receipts it sends (DELIVRD)"
    )
    sp = sub.add_parser(
        "status",
        help="show the state of a request: per recipient and part",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    with_config(sp)
    sp.add_argument("id", help="the request id (as in `OK - n SMS, ID - <id>`)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp = command(
        "migrate",
        "create or upgrade the spool's schema",
        "Bring the spool's schema to the version this relay needs and print it. `serve` does "
        "the same at start; run it on its own before starting upgraded nodes of a PostgreSQL "
        "spool. Migrations are numbered and applied once, whichever node runs them. A SQLite "
        "spool is created on open and has nothing to migrate.",
    )
    with_config(sp)
    sp = command(
        "prune",
        "delete spool history older than spool.keep_days now",
        "Run one retention round, as the daemon does every 10 minutes: delete final history "
        "(requests with all their parts final, receipts, sent mails and callbacks, MO SMS) "
        "older than spool.keep_days, and SPEC §5 state past its window, in small batches; "
        "then give free pages back to the file system (SQLite). Safe next to running relays. "
        "Prints the rows deleted per table.",
    )
    with_config(sp)
    sp.add_argument(
        "--keep-days",
        type=float,
        metavar="DAYS",
        help="override spool.keep_days for this run (0: prune only SPEC §5 state)",
    )
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp = sub.add_parser("queue", help="show spool counts by state")
    with_config(sp)
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp = command(
        "retry",
        "send a request's failed parts again",
        "Put the parts of request ID that ended rejected, undeliverable, expired or cancelled "
        "back in the queue, due now, with a fresh validity (spool.validity) and zero attempts. "
        "A running relay picks them up within a second. Parts already submitted or delivered "
        "are left alone.",
    )
    with_config(sp)
    sp.add_argument("id", help="the request id (as in `OK - n SMS, ID - <id>`)")
    sp = command(
        "cancel",
        "cancel a request's parts that are still queued",
        "Mark the parts of request ID that wait in the queue as cancelled, so they are never "
        "sent. Parts already handed to the SMSC cannot be called back.",
    )
    with_config(sp)
    sp.add_argument("id", help="the request id (as in `OK - n SMS, ID - <id>`)")
    sp = command(
        "send",
        "send one test SMS through a running relay (by SMTP, like any client)",
        "Connect to the relay named in the config (smtp.host:smtp.port), send a command mail "
        "to send@<first smtp.domains entry>, then follow the request in the spool until it is "
        "submitted upstream. The password is read from --password-file, from the "
        "SMS_RELAY_SEND_PASSWORD environment variable, or asked for on a terminal; never give "
        "it on the command line (other users can see it in `ps`).\n\n"
        "example:\n  sms-relay send -c /etc/sms-relay/relay.toml --login alex \\\n"
        "      --password-file ~/.sms-pass --sender Alex +79991234567 'test from sms-relay'",
    )
    with_config(sp)
    sp.add_argument("--login", required=True, help="the account login ([[accounts]] login)")
    sp.add_argument(
        "--password-file",
        type=Path,
        help="file whose first line is the password (`-` reads it from stdin)",
    )
    sp.add_argument("--sender", default="", help="sender name or number (default: the account's)")
    sp.add_argument(
        "--relay",
        metavar="HOST:PORT",
        help="SMTP address of the relay (default: smtp.host:smtp.port from the config)",
    )
    sp.add_argument(
        "--reply-to",
        default="",
        metavar="ADDR",
        help="also have the OK/ERROR reply mailed here (default: none; the envelope sender is "
        "<>, so the relay sends no reply mail and this command reads the outcome itself)",
    )
    sp.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the parts to be submitted upstream (default 10; 0: do not "
        "wait, exit once the relay has accepted the mail)",
    )
    sp.add_argument("phones", help="recipient number(s), comma-separated (+79991234567,…)")
    sp.add_argument("text", help="the SMS text")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "hash-password":
            return _hash_password()
        if args.command == "smsc-sim":
            return _smsc_sim(args)
        cfg = load_config(args.config)
        if args.command == "check-config":
            return _check_config(cfg, args.config)
        if args.command == "serve":
            return _serve(cfg, args.config)
        if args.command == "status":
            return asyncio.run(_status(cfg, args.id, args.json))
        if args.command == "migrate":
            return asyncio.run(_migrate(cfg))
        if args.command == "queue":
            return asyncio.run(_queue(cfg, args.json))
        if args.command == "prune":
            return asyncio.run(_prune(cfg, args.keep_days, args.json))
        if args.command == "retry":
            return asyncio.run(_retry(cfg, args.id))
        if args.command == "cancel":
            return asyncio.run(_cancel(cfg, args.id))
        if args.command == "send":
            return _send(cfg, args)
    except ConfigError as exc:
        print(f"sms-relay: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except RelayError as exc:
        print(f"sms-relay: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_CONFIG


def _hash_password() -> int:
    from relay.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("sms-relay: the two passwords differ", file=sys.stderr)
            return EXIT_CONFIG
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("sms-relay: empty password", file=sys.stderr)
        return EXIT_CONFIG
    print(hash_password(password))
    return EXIT_OK


def _check_config(cfg: RelayConfig, path: Path | None) -> int:
    from relay.app import tls_context

    try:
        tls_context(cfg)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"smtp.tls_cert/tls_key: cannot load: {exc}") from None
    where = str(path) if path else "embedded defaults"
    print(
        f"{where}: OK — SMTP {cfg.smtp.host}:{cfg.smtp.port}, "
        f"{len(cfg.accounts)} account(s), upstream "
        + (f"{cfg.smpp.host}:{cfg.smpp.port}" if cfg.smpp.host else "virtual SMSC")
        + f", spool {cfg.spool.url}"
    )
    return EXIT_OK


def _serve(cfg: RelayConfig, path: Path | None) -> int:
    from relay.app import Relay
    from relay.idle_loop import new_event_loop
    from relay.logs import secrets_of, setup_logging

    redactor = setup_logging(cfg.log, secrets_of(cfg))
    if path is None:
        log.warning(
            "no config file given: running on the embedded defaults "
            "(SMTP %s:%d, spool %s, virtual SMSC)",
            cfg.smtp.host,
            cfg.smtp.port,
            cfg.spool.url,
        )
    if not cfg.accounts:
        log.warning("no [[accounts]] configured: every command mail will get ERROR = 2")
    relay = Relay(cfg, config_path=path, redactor=redactor)
    try:
        # asyncio.run(), on a loop that tells the spool when it runs out of work (idle_loop).
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(relay.run())
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_FAILURE
    return EXIT_OK


def _smsc_sim(args: argparse.Namespace) -> int:
    from relay.smpp.simulator import serve_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            serve_forever(
                args.host, args.port, json_lines=args.json, receipt_stat=args.receipt_stat
            )
        )
    return EXIT_OK


async def _status(cfg: RelayConfig, request_id: str, as_json: bool) -> int:
    """Per message (recipient) its state derived from all parts, then each part (SPEC §9)."""
    from dataclasses import asdict

    from relay.spool import spool_for_config
    from relay.spool.model import message_state

    spool = spool_for_config(cfg)
    await spool.open()
    try:
        jobs = await spool.request_status(request_id)
    finally:
        await spool.close()
    if not jobs:
        print(f"sms-relay: no request with id {request_id}", file=sys.stderr)
        return EXIT_NOT_FOUND
    messages: dict[tuple[int, str], list[JobView]] = {}
    for j in jobs:
        messages.setdefault((j.entry, j.phone), []).append(j)
    states = {key: message_state([p.state for p in parts]) for key, parts in messages.items()}
    if as_json:
        out = {
            "id": request_id,
            "state": message_state(list(states.values())),
            "messages": [
                {
                    "entry": entry,
                    "phone": phone,
                    "state": states[(entry, phone)],
                    "parts": [asdict(p) for p in parts],
                }
                for (entry, phone), parts in messages.items()
            ],
        }
        print(json.dumps(out, ensure_ascii=False))
        return EXIT_OK
    print(f"request {request_id}: {message_state(list(states.values()))}")
    for (_entry, phone), parts in messages.items():
        print(f"{phone:<16} {states[(_entry, phone)]}")
        for j in parts:
            receipt = ""
            if j.receipt:
                receipt = f"{j.receipt.get('stat', '')} err:{j.receipt.get('err', '')}"
            print(
                f"  part {j.part:>2}/{j.parts:<2} {j.state:<13} tries {j.attempts:<3} "
                f"id {j.upstream_id or '-':<20} {receipt:<20} {j.error}"
            )
    return EXIT_OK


async def _migrate(cfg: RelayConfig) -> int:
    """Apply the spool's missing schema migrations (PostgreSQL); print the version reached."""
    from relay.spool import spool_for_url

    url = cfg.spool.url
    if url.startswith("sqlite:///"):
        spool = spool_for_url(url)
        await spool.open()  # creates the tables when missing
        await spool.close()
        print(f"spool {url}: SQLite schema is created on open; nothing to migrate")
        return EXIT_OK
    from relay.spool.postgres import migrate_url

    applied, version = await migrate_url(url)
    for m in applied:
        print(f"applied migration {m.version}: {m.name}")
    print(f"spool schema at version {version}")
    return EXIT_OK


async def _queue(cfg: RelayConfig, as_json: bool) -> int:
    """Jobs and mails by state, and the oldest due job's time (how late the spool is)."""
    import time

    from relay.spool import spool_for_config

    spool = spool_for_config(cfg)
    await spool.open()
    try:
        counts = await spool.counts()
        due = await spool.next_due()
    finally:
        await spool.close()
    now = time.time()
    lag = None if due is None else max(0.0, now - due)
    if as_json:
        print(json.dumps({"counts": counts, "oldest_due": due, "oldest_due_age": lag}))
        return EXIT_OK
    for state, n in counts.items():
        print(f"{state:<20} {n}")
    if due is None:
        print(f"{'oldest due job':<20} -")
    else:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(due))
        late = f"due for {lag:.1f} s" if lag else f"due in {due - now:.1f} s"
        print(f"{'oldest due job':<20} {stamp} UTC ({late})")
    return EXIT_OK


async def _prune(cfg: RelayConfig, keep_days: float | None, as_json: bool) -> int:
    """One retention round now (relay/pruner.py), with the config's or the given keep_days."""
    from relay.pruner import Pruner, prune_rules
    from relay.spool import spool_for_config

    if keep_days is not None and keep_days < 0:
        raise ConfigError("--keep-days must be 0 or more")
    rules = prune_rules(cfg)
    if keep_days is not None:
        rules = type(rules)(keep_days, rules.mo, rules.limits)
    spool = spool_for_config(cfg)
    await spool.open()
    try:
        pruner = Pruner(spool, rules, pause=0.0)
        deleted = await pruner.round()
    finally:
        await spool.close()
    if as_json:
        print(json.dumps({"deleted": deleted, "pages_freed": pruner.counters.pages}))
        return EXIT_OK
    for table, n in sorted(deleted.items()):
        print(f"{table:<20} {n}")
    print(f"{'pages freed':<20} {pruner.counters.pages}")
    return EXIT_OK


async def _retry(cfg: RelayConfig, request_id: str) -> int:
    import time

    from relay.spool import spool_for_config

    spool = spool_for_config(cfg)
    await spool.open()
    try:
        if await spool.request_error(request_id) is None:
            print(f"sms-relay: no request with id {request_id}", file=sys.stderr)
            return EXIT_NOT_FOUND
        n = await spool.requeue(request_id, time.time(), float(cfg.spool.validity))
    finally:
        await spool.close()
    if n == 0:
        print(
            f"sms-relay: request {request_id} has no failed, expired or cancelled parts",
            file=sys.stderr,
        )
        return EXIT_NOT_FOUND
    print(f"request {request_id}: {n} part(s) queued again")
    return EXIT_OK


async def _cancel(cfg: RelayConfig, request_id: str) -> int:
    import time

    from relay.spool import spool_for_config

    spool = spool_for_config(cfg)
    await spool.open()
    try:
        if await spool.request_error(request_id) is None:
            print(f"sms-relay: no request with id {request_id}", file=sys.stderr)
            return EXIT_NOT_FOUND
        n = await spool.cancel(request_id, time.time())
    finally:
        await spool.close()
    if n == 0:
        print(f"sms-relay: request {request_id} has no queued parts to cancel", file=sys.stderr)
        return EXIT_NOT_FOUND
    print(f"request {request_id}: {n} queued part(s) cancelled")
    return EXIT_OK


def _send_password(path: Path | None) -> str:
    import os

    if path is not None:
        try:
            text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--password-file: cannot read {path}: {exc.strerror}") from None
        password = text.splitlines()[0] if text else ""
    elif os.environ.get("SMS_RELAY_SEND_PASSWORD"):
        password = os.environ["SMS_RELAY_SEND_PASSWORD"]
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        raise ConfigError("no password: use --password-file FILE or SMS_RELAY_SEND_PASSWORD")
    if not password:
        raise ConfigError("empty password")
    return password


def _send(cfg: RelayConfig, args: argparse.Namespace) -> int:
    import re
    import smtplib
    from email.message import EmailMessage

    password = _send_password(args.password_file)
    if ":" in args.login or ":" in password:
        raise ConfigError("login and password cannot contain ':' in a command mail")
    if args.relay:
        host, _, port_text = args.relay.rpartition(":")
        if not host or not port_text.isdigit():
            raise ConfigError(f"--relay {args.relay!r}: expected HOST:PORT")
        port = int(port_text)
    else:
        host, port = cfg.smtp.host, cfg.smtp.port
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - a wildcard listen address: connect locally
        host = "127.0.0.1"
    domain = cfg.smtp.domains[0] if cfg.smtp.domains else "localhost"
    msg = EmailMessage()
    msg["To"] = f"send@{domain}"
    msg["From"] = args.reply_to or "sms-relay-cli@localhost"
    msg["Subject"] = "sms-relay send"
    msg.set_content(
        f"{args.login}:{password}:::,,{args.sender},{1 if args.reply_to else 0}:"
        f"{args.phones}:{args.text}",
        charset="utf-8",
        cte="8bit",
    )
    rcpt = f"send@{domain}"
    try:
        with smtplib.SMTP(host, port, timeout=30) as client:
            client.ehlo_or_helo_if_needed()
            code, reply = client.mail(args.reply_to or "")
            if code == 250:
                code, reply = client.rcpt(rcpt)
            if code in (250, 251):
                code, reply = client.data(msg.as_bytes())
    except (OSError, smtplib.SMTPException) as exc:
        print(f"sms-relay: cannot talk to the relay at {host}:{port}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    answer = reply.decode("utf-8", "replace")
    if code != 250:
        print(f"sms-relay: the relay answered {code} {answer}", file=sys.stderr)
        return EXIT_REFUSED if 500 <= code < 600 else EXIT_FAILURE
    found = re.search(r"queued as (\S+)", answer)
    if found is None:
        print(f"sms-relay: the relay answered 250 without a request id: {answer}", file=sys.stderr)
        return EXIT_FAILURE
    request_id = found.group(1).split(",")[0]
    return asyncio.run(_follow(cfg, request_id, args.wait))


# States in which a part has left the relay (or ended) for `send --wait`.
_SUBMITTED = frozenset({"submitted", "delivered"})
_WAITING = frozenset({"queued", "sending"})


async def _follow(cfg: RelayConfig, request_id: str, wait: float) -> int:
    """After `250`: read the request's outcome from the spool; wait for the submit."""
    import time

    from relay.errors import ErrorCode
    from relay.spool import spool_for_config

    spool = spool_for_config(cfg)
    await spool.open()
    try:
        error = await spool.request_error(request_id)
        if error is None:
            print(
                f"sms-relay: the relay queued request {request_id}, but it is not in the spool "
                f"{cfg.spool.url}: is -c the config of the running relay?",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        if error:
            print(f"request {request_id}: ERROR = {error} ({ErrorCode(error).description})")
            return EXIT_REFUSED
        deadline = time.monotonic() + wait
        while True:
            jobs = await spool.request_status(request_id)
            waiting = [j for j in jobs if j.state in _WAITING]
            if not waiting or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.1)
    finally:
        await spool.close()
    states = ", ".join(f"{j.phone} part {j.part}/{j.parts}: {j.state}" for j in jobs)
    print(f"request {request_id}: {states}")
    if wait <= 0:
        return EXIT_OK
    if waiting:
        print(
            f"sms-relay: not submitted within {wait:g} s; see `sms-relay status {request_id}`",
            file=sys.stderr,
        )
        return EXIT_PENDING
    return EXIT_OK if all(j.state in _SUBMITTED for j in jobs) else EXIT_FAILURE
