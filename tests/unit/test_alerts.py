"""The alerting rules (deploy/prometheus/recsys-alerts.yaml): Prometheus's own checker and the rules' unit tests
(recsys-alerts.test.yaml) run by promtool, which scripts/test.sh puts in .venv/bin (skipped without one), and what
every rule must carry for the one paged. tests/integration/test_observability.py checks that each metric they read
is exported."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

RULES_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = RULES_DIR / "recsys-alerts.yaml"


def promtool(*args: str) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool") or str(Path(sys.executable).parent / "promtool")
    if not Path(tool).exists():
        pytest.skip("promtool is not installed (bash scripts/ensure_promtool.sh)")
    return subprocess.run([tool, *args], cwd=RULES_DIR, capture_output=True, text=True, timeout=60)


def rules() -> list[dict]:
    """The alerting rules (the recording rule they read is not one)."""
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"] if "alert" in rule]


def test_prometheus_accepts_the_rules():
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_rule_fires_on_its_fault_and_not_beside_it():
    result = promtool("test", "rules", "recsys-alerts.test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_rule_has_a_unit_test_a_severity_and_says_what_to_do():
    tests = yaml.safe_load((RULES_DIR / "recsys-alerts.test.yaml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert {rule["alert"] for rule in rules()} == tested
    for rule in rules():
        assert rule["labels"]["severity"] in {"critical", "warning"} and rule["for"], rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
