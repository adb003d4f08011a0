"""The operator commands as an operator runs them: subprocesses, exit codes, readable output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from relay.passwords import PasswordChecker


def cli(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


def test_check_config_ok(tmp_path: Path) -> None:
    cfg = tmp_path / "r.toml"
    cfg.write_text('[smtp]\nport = 2600\n[[accounts]]\nlogin = "a"\npassword = "p"\n')
    r = cli("check-config", "-c", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout and "1 account(s)" in r.stdout


def test_check_config_unknown_key_wrong_type_missing_password(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[smtp]\nprot = 25\nport = "many"\n[[accounts]]\nlogin = "a"\n')
    r = cli("check-config", "-c", str(cfg))
    assert r.returncode == 2
    assert "smtp.prot: unknown key" in r.stderr
    assert "smtp.port" in r.stderr
    assert "accounts.0.password: required key is missing" in r.stderr
    assert "Traceback" not in r.stderr


def test_check_config_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.toml"
    bad.write_text("[smtp\n")
    r = cli("check-config", "-c", str(bad))
    assert r.returncode == 2 and "not valid TOML" in r.stderr
    r = cli("check-config", "-c", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "no such file" in r.stderr


def test_env_overrides_file(tmp_path: Path) -> None:
    import os

    cfg = tmp_path / "r.toml"
    cfg.write_text("[smtp]\nport = 2600\n")
    r = cli("check-config", "-c", str(cfg), env={**os.environ, "SMS_RELAY_SMTP__PORT": "2700"})
    assert r.returncode == 0 and ":2700" in r.stdout


def test_hash_password_output_is_accepted() -> None:
    r = cli("hash-password", stdin="correct horse\n")
    assert r.returncode == 0
    hashed = r.stdout.strip()
    assert hashed.startswith("$argon2id$")
    assert "correct horse" not in r.stdout
    checker = PasswordChecker()
    assert checker.verify(hashed, "correct horse")
    assert not checker.verify(hashed, "correct horsE")


def test_prune_deletes_old_history_and_gives_pages_back(tmp_path: Path) -> None:
    import asyncio
    import json
    import sqlite3
    import time

    from relay.smpp.model import SubmitSm
    from relay.spool.model import JobState, NewJob, NewMail, NewRequest
    from relay.spool.sqlite import SqliteSpool

    db = tmp_path / "spool.db"
    old, now = time.time() - 40 * 86400, time.time()
    sm = SubmitSm("Alex", 5, 0, "79160000000", b"x" * 140, 0)
    mail = NewMail("relay@x", "ops@x", b"Subject: OK\r\n\r\n" + b"y" * 2000, old + 86400)

    def request(key: str, at: float) -> NewRequest:
        job = NewJob("+79160000000", 0, 1, 1, sm, at, at + 86400)
        return NewRequest(key, f"id-{key}", "alex", "ops@x", "127.0.0.1", at, (job,), (mail,))

    async def fill() -> None:
        spool = SqliteSpool(db)
        await spool.open()
        try:
            await spool.store_all([request(f"old{i}", old) for i in range(500)])
            await spool.store(request("new", now))
            for job in await spool.claim(1000, now):
                await spool.mark_submitted(job.id, f"u{job.id}", (f"u{job.id}",), old)
                await spool.apply_receipt((f"u{job.id}",), JobState.DELIVERED, {}, old)
            for m in await spool.claim_mails(1000, old):
                await spool.mark_mail_sent(m.id, old)
        finally:
            await spool.close()

    asyncio.run(fill())
    # the status notices are settled by a running notifier; here none runs: settle them by hand
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM notices")
    cfg = tmp_path / "r.toml"
    cfg.write_text(f'[spool]\nurl = "sqlite:///{db}"\nkeep_days = 30\n')
    size = db.stat().st_size
    r = cli("prune", "-c", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["deleted"] == {"requests": 500, "jobs": 500, "upstream_keys": 500, "mails": 500}
    assert out["pages_freed"] > 100
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT key FROM requests").fetchall() == [("new",)]
        assert conn.execute("SELECT COUNT(*) FROM mails").fetchone() == (1,)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert db.stat().st_size < size / 2
    r = cli("prune", "-c", str(cfg))  # nothing left to prune: still success
    assert r.returncode == 0 and "pages freed" in r.stdout
    r = cli("prune", "-c", str(cfg), "--keep-days", "-1")
    assert r.returncode == 2 and "--keep-days" in r.stderr


def test_concat_timeout_longer_than_concat_window_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "r.toml"
    cfg.write_text("[mo]\nconcat_window = 60\nconcat_timeout = 120\n")
    r = cli("check-config", "-c", str(cfg))
    assert r.returncode == 2 and "concat_timeout" in r.stderr
