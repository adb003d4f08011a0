"""The shipped operations files: systemd unit, sample relay.toml, Prometheus rules, dashboard.

systemd-analyze and promtool are external tools: `.ci/deps-ops` installs them in CI; without them
those tests skip and say so. Everything else here needs only the standard library and relay.config.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from relay.config import RelayConfig, load_config
from relay.passwords import PasswordChecker

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "sms-relay.service"
SAMPLE = ROOT / "deploy" / "relay.toml"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "sms-relay.json"
METRICS_SOURCE = ROOT / "relay" / "metrics.py"
DEPS_OPS = ROOT / ".ci" / "deps-ops"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
PROMTOOL = shutil.which("promtool")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not installed (Debian package `systemd`; .ci/deps-ops installs it)",
)
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian package `prometheus`; .ci/deps-ops installs it)",
)

# Metrics the rules and the dashboard use before relay/metrics.py exports them: name → type.
PROPOSED_METRICS = {"sms_relay_spool_oldest_due_seconds": "gauge"}


# --------------------------------------------------------------------------- systemd unit


def unit_directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for each assignment, in order (keys may repeat, unlike INI)."""
    out: list[tuple[str, str, str]] = []
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {raw!r}"
        out.append((section, key.strip(), value.strip()))
    return out


def runnable_copy(tmp_path: Path, text: str) -> Path:
    """The unit with ExecStart's program replaced by /bin/true: `verify` checks that the binary
    exists, and sms-relay is not installed at /usr/local/bin on a build machine."""
    replaced, n = re.subn(
        r"^ExecStart=/usr/local/bin/sms-relay ", "ExecStart=/bin/true ", text, flags=re.M
    )
    assert n == 1, "ExecStart=/usr/local/bin/sms-relay ... not found exactly once"
    path = tmp_path / "sms-relay.service"  # verify wants the real unit name
    path.write_text(replaced, encoding="utf-8")
    return path


def verify_problems(unit: Path) -> list[str]:
    """systemd-analyze verify's complaints about this unit (it exits 0 on mere warnings such as
    an unknown key, so its stderr is what counts)."""
    assert SYSTEMD_ANALYZE is not None
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [line for line in proc.stderr.splitlines() if unit.name in line]
    if proc.returncode != 0:
        problems.append(f"exit status {proc.returncode}: {proc.stderr.strip()}")
    return problems


def test_unit_has_the_required_directives() -> None:
    d = unit_directives(UNIT.read_text(encoding="utf-8"))
    service = {(k, v) for s, k, v in d if s == "Service"}
    required = {
        ("Type", "notify"),
        ("ExecStart", "/usr/local/bin/sms-relay serve -c /etc/sms-relay/relay.toml"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("DynamicUser", "yes"),
        ("StateDirectory", "sms-relay"),
        ("ConfigurationDirectory", "sms-relay"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallFilter", "@system-service"),
        ("SystemCallArchitectures", "native"),
        ("UMask", "0077"),
        ("Restart", "on-failure"),
        ("TimeoutStopSec", "15"),
        ("KillMode", "mixed"),
        ("Environment", "SMS_RELAY_SPOOL__URL=sqlite:////var/lib/sms-relay/spool.db"),
    }
    assert required - service == set()
    assert ("Install", "WantedBy", "multi-user.target") in d


def test_unit_spool_path_is_the_samples_and_inside_the_state_directory() -> None:
    d = unit_directives(UNIT.read_text(encoding="utf-8"))
    env = dict(v.split("=", 1) for s, k, v in d if s == "Service" and k == "Environment")
    url = env["SMS_RELAY_SPOOL__URL"]
    assert url == tomllib.loads(SAMPLE.read_text(encoding="utf-8"))["spool"]["url"]
    assert url.removeprefix("sqlite:///").startswith("/var/lib/sms-relay/")


@needs_systemd_analyze
def test_unit_verifies_clean(tmp_path: Path) -> None:
    assert verify_problems(runnable_copy(tmp_path, UNIT.read_text(encoding="utf-8"))) == []


@needs_systemd_analyze
def test_verify_reports_a_misspelt_key(tmp_path: Path) -> None:
    """The check above can fail: a typo is only a warning to systemd, and we catch it."""
    text = UNIT.read_text(encoding="utf-8").replace("LockPersonality=", "LockPersonalty=")
    problems = verify_problems(runnable_copy(tmp_path, text))
    assert any("LockPersonalty" in p for p in problems), problems


@needs_systemd_analyze
def test_unit_exposure_stays_low(tmp_path: Path) -> None:
    """`systemd-analyze security` scores 0 (locked down) to 10; this unit scores 1.4 on systemd
    252. The threshold is in tenths; 2.0 leaves room for newer versions' extra checks while still
    failing when a hardening line goes missing."""
    assert SYSTEMD_ANALYZE is not None
    unit = runnable_copy(tmp_path, UNIT.read_text(encoding="utf-8"))
    proc = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr


# --------------------------------------------------------------------------- sample relay.toml


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No SMS_RELAY_* variable of the developer's shell may change what the sample loads to."""
    for name in list(os.environ):
        if name.upper().startswith("SMS_RELAY_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_sample_loads_and_runs_on_a_fresh_system(clean_env: pytest.MonkeyPatch) -> None:
    cfg = load_config(SAMPLE)
    assert cfg.virtual_smsc
    assert (cfg.smtp.host, cfg.smtp.port) == ("127.0.0.1", 2525)
    assert cfg.spool.url == "sqlite:////var/lib/sms-relay/spool.db"
    assert [a.login for a in cfg.accounts] == ["alex"]


def test_sample_account_password_is_an_argon2_hash_of_change_me(
    clean_env: pytest.MonkeyPatch,
) -> None:
    password = load_config(SAMPLE).accounts[0].password
    assert password.startswith("$argon2id$")
    checker = PasswordChecker()
    assert checker.verify(password, "change-me")
    assert not checker.verify(password, "change-me ")


def test_environment_overrides_one_key_and_keeps_the_files_others(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The unit sets SMS_RELAY_SPOOL__URL; the rest of [spool] must still come from the file."""
    text = SAMPLE.read_text(encoding="utf-8").replace("validity = 86400", "validity = 3600")
    path = tmp_path / "relay.toml"
    path.write_text(text, encoding="utf-8")
    clean_env.setenv("SMS_RELAY_SPOOL__URL", "sqlite:////tmp/other.db")
    cfg = load_config(path)
    assert cfg.spool.url == "sqlite:////tmp/other.db"
    assert cfg.spool.validity == 3600


def section_models() -> dict[str, type[BaseModel]]:
    """Each top-level key of RelayConfig → the model of its section (`accounts` → AccountConfig)."""
    out: dict[str, type[BaseModel]] = {}
    for name, field in RelayConfig.model_fields.items():
        ann: Any = field.annotation
        if get_origin(ann) is list:
            (ann,) = get_args(ann)
        assert isinstance(ann, type) and issubclass(ann, BaseModel), name
        out[name] = ann
    return out


def sample_keys(text: str) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Per section: the keys assigned, and the keys shown only commented out (`# key = ...`)."""
    assigned: dict[str, set[str]] = {}
    commented: dict[str, set[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        header = re.fullmatch(r"\[\[?\s*([A-Za-z0-9_.]+)\s*\]\]?", line)
        if header:
            section = header.group(1)
            continue
        key = re.match(r"([A-Za-z0-9_]+)\s*=", line)
        if key:
            assigned.setdefault(section, set()).add(key.group(1))
            continue
        key = re.match(r"#\s*([a-z0-9_]+)\s*=\s*\S", line)  # config keys are lower case
        if key and section:
            commented.setdefault(section, set()).add(key.group(1))
    return assigned, commented


def test_sample_shows_every_config_key() -> None:
    """When a key is added to relay/config.py, this fails until the sample documents it.

    A key may be shown commented out only when its default is None (TOML has no null).
    """
    assigned, commented = sample_keys(SAMPLE.read_text(encoding="utf-8"))
    missing: list[str] = []
    for section, model in section_models().items():
        for key, field in model.model_fields.items():
            if key in assigned.get(section, set()):
                continue
            if key in commented.get(section, set()) and field.default is None:
                continue
            missing.append(f"{section}.{key}")
    assert missing == []
    models = section_models()
    unknown_commented = [
        f"{s}.{k}"
        for s, keys in commented.items()
        for k in keys
        if s not in models or k not in models[s].model_fields
    ]
    assert unknown_commented == []


def test_sample_keys_each_have_a_comment() -> None:
    """Every assignment is preceded by a comment line, or shares a comment block with the keys
    just above it (e.g. data_coding_gsm/latin1/ucs2 under one explanation)."""
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    undocumented: list[str] = []
    for i, line in enumerate(lines):
        if not re.match(r"[A-Za-z0-9_]+\s*=", line):
            continue
        j = i - 1
        while j >= 0 and re.match(r"[A-Za-z0-9_]+\s*=", lines[j]):
            j -= 1
        if j < 0 or not lines[j].lstrip().startswith("#") or i - j > 3:
            undocumented.append(line.split("=")[0].strip())
    assert undocumented == []


def test_every_config_model_field_has_a_default_or_is_an_account_identity() -> None:
    """The completeness test relies on model_fields; make sure it sees real fields."""
    models = section_models()
    assert set(models) == {
        "smtp",
        "smpp",
        "spool",
        "replies",
        "metrics",
        "log",
        "limits",
        "mo",
        "callbacks",
        "accounts",
    }
    required = {
        f"{s}.{k}"
        for s, m in models.items()
        for k, f in m.model_fields.items()
        if f.default is PydanticUndefined and f.default_factory is None
    }
    assert required == {"accounts.login", "accounts.password"}


# --------------------------------------------------------------------------- metrics names


def exported_metrics() -> dict[str, str]:
    """Metric family name → type, read from relay/metrics.py's collector source.

    Parsed, not imported: relay.metrics pulls in the whole daemon. If metrics.py stops defining
    families as `<Kind>MetricFamily(p + "name", ...)` this finds nothing and the tests say so.
    """
    source = METRICS_SOURCE.read_text(encoding="utf-8")
    prefix = re.search(r'\bp = "([a-z_]+)"', source)
    assert prefix, 'relay/metrics.py: no `p = "sms_relay_"` prefix found; update this parser'
    found = {
        prefix.group(1) + name: kind.lower()
        for kind, name in re.findall(
            r'(Counter|Gauge|Histogram)MetricFamily\(\s*p \+ "([a-z0-9_]+)"', source
        )
    }
    assert len(found) >= 5, "relay/metrics.py: metric families not found; update this parser"
    return found


def series_names() -> set[str]:
    """Every series name a PromQL expression may use for the exported + proposed families."""
    names = {"up"}  # Prometheus' own scrape health
    for name, kind in {**exported_metrics(), **PROPOSED_METRICS}.items():
        if kind == "counter":
            names.add(name + "_total")
        elif kind == "histogram":
            names |= {name + "_bucket", name + "_sum", name + "_count"}
        else:
            names.add(name)
    return names


def metric_names_in(text: str) -> set[str]:
    return set(re.findall(r"\bsms_relay_[a-z0-9_]+", text))


def test_metrics_parser_sees_the_known_families() -> None:
    assert exported_metrics()["sms_relay_bind_up"] == "gauge"
    assert exported_metrics()["sms_relay_mails"] == "counter"
    assert exported_metrics()["sms_relay_submit_latency_seconds"] == "histogram"


def test_alert_rules_use_only_exported_metric_names() -> None:
    used = metric_names_in(ALERTS.read_text(encoding="utf-8"))
    assert used, "no sms_relay_ metric in alerts.yml"
    assert used - series_names() == set()


def test_alert_rule_tests_use_only_exported_metric_names() -> None:
    assert metric_names_in(ALERTS_TEST.read_text(encoding="utf-8")) - series_names() == set()


# --------------------------------------------------------------------------- Prometheus rules


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@needs_promtool
def test_alert_rules_pass_promtool_check() -> None:
    proc = promtool("check", "rules", ALERTS.name, cwd=ALERTS.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 10 rules found" in proc.stdout


@needs_promtool
def test_alert_rules_fire_as_their_unit_tests_expect() -> None:
    """alerts_test.yml feeds synthetic series and names the exact alerts (labels, texts)."""
    proc = promtool("test", "rules", ALERTS_TEST.name, cwd=ALERTS.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_rule_tests_can_fail(tmp_path: Path) -> None:
    """A threshold changed in the rules makes alerts_test.yml fail."""
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    text = ALERTS.read_text(encoding="utf-8")
    assert "> 0.25" in text
    (tmp_path / ALERTS.name).write_text(text.replace("> 0.25", "> 0.6"), encoding="utf-8")
    proc = promtool("test", "rules", ALERTS_TEST.name, cwd=tmp_path)
    assert proc.returncode != 0
    assert "SmsRelayRefusedMailsHigh" in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- Grafana dashboard


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panel_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def test_dashboard_panels_are_well_formed() -> None:
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] != "row":
            assert p["targets"], p["title"]
            assert p["datasource"]["uid"] == "${datasource}"


def test_dashboard_uses_only_exported_metric_names() -> None:
    used = metric_names_in("\n".join(panel_exprs()))
    assert used - series_names() == set()


def test_dashboard_shows_every_metric_the_alerts_use() -> None:
    alerting = metric_names_in(ALERTS.read_text(encoding="utf-8"))
    shown = metric_names_in("\n".join(panel_exprs()))
    assert alerting - shown == set()


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel query, given as a recording rule (Grafana variables filled)."""
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(panel_exprs()):
        filled = (
            expr.replace("$__rate_interval", "5m").replace("$job", ".*").replace("$instance", ".*")
        )
        assert "$" not in filled, expr
        lines += [f"      - record: panel_query_{i}", f"        expr: {json.dumps(filled)}"]
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text("\n".join(lines) + "\n", encoding="utf-8")
    proc = promtool("check", "rules", rules.name, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- CI helper


def test_deps_ops_is_valid_bash() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    proc = subprocess.run([bash, "-n", str(DEPS_OPS)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert os.access(DEPS_OPS, os.X_OK)
