"""Static checks of the Grafana dashboard (deploy/grafana) that need no running service.

tests/integration/test_observability.py checks that every metric it names is exported;
this checks that a metric whose name carries its unit (Prometheus's ``_bytes``,
``_seconds``) is drawn in that unit, not in the unit of another series of its panel,
that every series is scoped by the dashboard's namespace and job variables, and that
promtool parses every expression.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.unit.test_alerts import promtool

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "recsys-dashboard.json"
# A series that is one metric as exported (no arithmetic, no rate): its name says its unit.
PLAIN_SELECTOR = re.compile(r"([a-z_:][a-z0-9_:]*)(\{[^}]*\})?(\s*==\s*\d+)?")
GRAFANA_UNITS = {"_bytes": {"bytes", "decbytes"}, "_seconds": {"s"}}


def series_units(panel: dict) -> dict[str, str | None]:
    """refId -> the unit Grafana draws that target's series in (an override by refId, else the panel's)."""
    config = panel.get("fieldConfig", {})
    units = {t["refId"]: config.get("defaults", {}).get("unit") for t in panel.get("targets", [])}
    for override in config.get("overrides", []):
        if override["matcher"]["id"] == "byFrameRefID":
            for prop in override["properties"]:
                if prop["id"] == "unit":
                    units[override["matcher"]["options"]] = prop["value"]
    return units


def test_a_metric_named_for_its_unit_is_drawn_in_it():
    panels = json.loads(DASHBOARD.read_text())["panels"]
    checked = 0
    for panel in panels:
        units = series_units(panel)
        for target in panel.get("targets", []):
            plain = PLAIN_SELECTOR.fullmatch(target["expr"].strip())
            suffix = next((s for s in GRAFANA_UNITS if plain and plain.group(1).endswith(s)), None)
            if suffix is None:
                continue
            checked += 1
            assert units[target["refId"]] in GRAFANA_UNITS[suffix], (
                f"{panel['title']}: {target['expr']} is drawn in {units[target['refId']]!r}")
    assert checked >= 3


def test_every_series_is_of_the_namespaces_and_jobs_chosen():
    """A bare selector would draw every process one Prometheus scrapes (``process_resident_memory_bytes`` of the
    Prometheus itself, of exporters) and add two deployments' series together."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    # One namespace at a time: "all" would add two deployments' series together. All jobs means those listed, the
    # ones exporting recsys metrics: an allValue of ".*" would match every process Prometheus scrapes.
    assert not variables["namespace"]["includeAll"] and not variables["namespace"]["multi"]
    assert variables["job"]["includeAll"] and "allValue" not in variables["job"]
    assert all(variables[name]["query"]["query"].startswith("label_values(recsys_") for name in ("namespace", "job"))
    selectors = [(panel["title"], match) for panel in dashboard["panels"] for target in panel.get("targets", [])
                 for match in re.finditer(r"\b(?:recsys|process)_[a-z0-9_]+(\{[^}]*\})?", target["expr"])]
    assert len(selectors) >= 25
    for title, match in selectors:
        assert match.group(1) and 'namespace=~"$namespace"' in match.group(1) and 'job=~"$job"' in match.group(1), (
            f"{title}: {match.group(0)} is not scoped to the chosen namespaces and jobs")


def test_every_expression_parses_as_promql(tmp_path):
    """promtool parses them as the expressions of recording rules, Grafana's variables given values."""
    dashboard = json.loads(DASHBOARD.read_text())
    values = {"$__rate_interval": "5m", "$namespace": ".*", "$job": ".*"}
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in values.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr, f"{panel['title']}: a variable with no value here: {target['expr']}"
            exprs.append(expr)
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:expr{i}", "expr": expr}
                                                         for i, expr in enumerate(exprs)]}]}
    (tmp_path / "dashboard-rules.yaml").write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", str(tmp_path / "dashboard-rules.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
