"""`objective.released_code` and `preset: reference-code` in the config: switches resolved by the preset,
values that conflict with it refused (never silently replaced), every switch documented."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from adpa_core import config
from adpa_core.config import (
    PRESET_VALUES,
    RELEASED_SWITCHES,
    ConfigError,
    ObjectiveConfig,
    ReleasedCodeConfig,
    config_from_dict,
    load_config,
    save_config,
)

ROOT = Path(__file__).parents[1]
TEACHERS = {"teacher": "t", "teacher_ref": "r"}


def _cfg(**objective):
    return config_from_dict({"objective": {"method": "adpa", **objective}, "model": TEACHERS})


def test_switches_are_off_by_default_and_on_under_the_preset():
    assert ObjectiveConfig().released_code.enabled() == []
    preset = _cfg(preset="reference-code").objective
    assert preset.released_code.enabled() == list(RELEASED_SWITCHES)
    assert (preset.k, preset.clip, preset.gamma, preset.support) == (50, [1e-8, 1 - 1e-8], 1.6, "topk")
    one_off = _cfg(preset="reference-code", released_code={"advantage_floor": False}).objective
    assert one_off.released_code.enabled() == [s for s in RELEASED_SWITCHES if s != "advantage_floor"]
    one_on = _cfg(released_code={"micro_batch_mean": True}).objective
    assert one_on.released_code.enabled() == ["micro_batch_mean"] and one_on.k == 20


CONFLICTS = [
    ({"k": 20}, "objective.k=20 conflicts with objective.preset=reference-code"),  # the default, given
    ({"k": 8}, "objective.k=8 conflicts"),
    ({"gamma": 0.5}, "objective.gamma=0.5 conflicts"),
    ({"clip": None}, "objective.clip=None conflicts"),
    ({"clip": [-1, 1]}, "objective.clip"),
    ({"support": "full"}, "objective.support='full' conflicts"),
    ({"beta": 0.5}, "objective.beta=0.5 conflicts with objective.released_code.unit_beta"),
    ({"reduction": "token"}, "objective.reduction=token conflicts with objective.released_code.micro_batch"),
]


@pytest.mark.parametrize(("given", "needle"), CONFLICTS, ids=[str(c[0]) for c in CONFLICTS])
def test_a_value_that_conflicts_with_the_preset_is_refused(given, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        _cfg(preset="reference-code", **given)


def test_the_preset_values_may_be_repeated_and_switches_turned_off():
    cfg = _cfg(preset="reference-code", k=50, gamma=1.6, clip=[1e-8, 0.99999999], support="topk")
    assert cfg.objective.k == 50
    # beta and reduction are free once their switch is off
    free = _cfg(
        preset="reference-code",
        beta=0.5,
        reduction="token",
        released_code={"unit_beta": False, "micro_batch_mean": False},
    )
    assert free.objective.beta == 0.5 and free.objective.reduction == "token"


def test_switches_that_act_on_the_top_k_need_top_k_support():
    with pytest.raises(
        ConfigError, match=r"released_code\.reference_imputation=true needs objective\.support"
    ):
        _cfg(support="full", released_code={"reference_imputation": True})


def test_a_resolved_preset_config_round_trips(tmp_path):
    cfg = _cfg(preset="reference-code", released_code={"kl_topk_online": False})
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg and not again.objective.released_code.kl_topk_online
    with pytest.raises(ConfigError, match=r"objective\.k=7 conflicts"):
        load_config(tmp_path / "c.yaml", ["objective.k=7"])


def test_every_shipped_yaml_still_loads():
    paths = [p for p in (ROOT / "configs").rglob("*.yaml") if "accelerate" not in p.parts]
    assert paths
    for path in paths:
        load_config(path)


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings: the string literal right after each annotated field."""
    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr):
            docs[node.target.id] = after.value.value
    return docs


def test_every_switch_is_documented_in_the_code_and_the_docs():
    docs = _field_docs(ReleasedCodeConfig)
    assert set(docs) == set(RELEASED_SWITCHES) and all(len(d) > 60 for d in docs.values())
    results = (ROOT / "docs" / "RESULTS.md").read_text(encoding="utf-8")
    for name in RELEASED_SWITCHES:
        assert f"`{name}`" in results, name
    assert set(PRESET_VALUES["reference-code"]) <= set(_field_docs(config.ObjectiveConfig))
