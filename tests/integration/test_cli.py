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
