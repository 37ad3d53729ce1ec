"""Static checks of the Grafana dashboard (deploy/grafana) that need no running service.

tests/integration/test_observability.py checks that every metric it names is exported;
this checks that a metric whose name carries its unit (Prometheus's ``_bytes``,
``_seconds``) is drawn in that unit, not in the unit of another series of its panel.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

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
