"""The README is the configuration and metrics reference: keep it complete."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

from worker import config
from worker.metrics import Metrics

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def _keys(cls: type, prefix: str) -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        if dataclasses.is_dataclass(kind) and kind is not config.SecretRef:
            out += _keys(kind, f"{prefix}{field.name}.")  # type: ignore[arg-type]
        else:
            out.append(prefix + field.name)
    return out


def test_every_configuration_key_is_documented() -> None:
    keys = _keys(config.Settings, "") + _keys(config.BotSettings, "bots.NAME.")
    keys.remove("bots")
    missing = [k for k in keys if f"`{k}`" not in README and k.rsplit(".", 1)[-1] not in README]
    assert not missing


def test_every_metric_is_documented() -> None:
    names = {m.name for m in Metrics().registry.collect()}
    documented = set(re.findall(r"`(cardq_[a-z_]+)", README))
    missing = {n for n in names if n not in documented and f"{n}_total" not in documented}
    assert not missing


def test_alert_runbook_anchors_exist() -> None:
    rules = (Path(__file__).parent.parent / "helm/cardq/templates/prometheusrule.yaml").read_text()
    for alert in re.findall(r"alert: (\w+)", rules):
        assert f"#### Alert: {alert}" in README, alert
