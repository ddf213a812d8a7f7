"""The workbench on the real-model world (here its tiny stand-in, tests/realkit.py): the world switch, the
matching reward (never the toy reward on real text), runs from the real recipes with the adapter teacher,
and the heatmap of sub-word tokens."""

from __future__ import annotations

import pytest
import yaml

from adpa_core.config import config_from_dict
from adpa_core.worlds import home_env
from workbench import views
from workbench.handlers import Handlers
from workbench.jobs import RunManager
from workbench.locations import Locations, WorkbenchError
from workbench.run_form import config_data, method_defaults, recipe
from workbench.tabs.world import on_world
from workbench.worlds import WORLDS, check_reward_world, model_world, same_model

from .realkit import tiny_real_world


@pytest.fixture(scope="module")
def h(tmp_path_factory):
    home = tmp_path_factory.mktemp("wb-real-home")
    tiny_real_world(home)
    loc = Locations.create(home, home / "runs")
    loc.runs_dir.mkdir()
    with home_env(home):
        yield Handlers(loc, RunManager(loc))


def test_every_real_recipe_loads_and_names_the_real_world():
    for method in ("sft", "dpo", "kd", "dckd", "adpa", "adpa_plus"):
        data = recipe(method, "real")
        assert data["data"]["train"] == "real:preferences" and data["model"]["lora"] is True
        if method in ("kd", "dckd", "adpa", "adpa_plus"):
            assert data["model"]["teacher_adapter"] == "real:teacher"
        if method in ("adpa", "adpa_plus"):
            assert data["model"]["teacher_quantization"] == "4bit"
    assert method_defaults("adpa", "real")["steps"] <= 60  # tens of steps
    assert method_defaults("adpa", "toy") != method_defaults("adpa", "real")


def test_a_run_on_the_real_world_uses_the_adapter_teacher(h):
    settings = {
        "method": "dckd",
        "student": "real:student",
        "teacher": "real:teacher",
        "teacher_ref": "real:teacher_ref",
        "data": "real:preferences",
        "steps": 2,
    }
    data = config_data(h.loc, "real-dckd", settings)
    model = data["model"]
    assert model["teacher_adapter"] == "real:teacher" and same_model(model["teacher"], "real:teacher_ref")
    assert "teacher_ref" not in model and model["lora"] is True
    config_from_dict(data)  # a valid run config
    with pytest.raises(WorkbenchError, match="its reference teacher is that base"):
        config_data(h.loc, "bad", {**settings, "method": "adpa", "teacher_ref": "toy:teacher_ref"})


def test_the_world_switch_sets_every_field(h):
    fields = on_world(h, "real", "adpa")
    assert fields[:5] == ("real:teacher", "real:teacher_ref", "real:student", "real:prompts", "real")
    assert fields[5] == 0.5  # the heatmap's colour scale: this world's advantages are small
    prompt, response = fields[6], fields[7]
    assert prompt and response  # a held-out pair whose rejected reply breaks an instruction
    assert fields[8:12] == ("real:student", "real:teacher", "real:teacher_ref", "real:preferences")
    assert fields[12] == WORLDS["real"].lora_rank and fields[15] == "real"
    assert "same model" in fields[17]
    assert on_world(h, "toy", "adpa")[:5] == (
        "toy:teacher",
        "toy:teacher_ref",
        "toy:student",
        "toy:prompts",
        "toy",
    )


def test_never_the_toy_reward_on_real_text(h, tmp_path):
    with pytest.raises(WorkbenchError, match="use the reward 'real'"):
        check_reward_world("toy", "real:student")
    with pytest.raises(WorkbenchError, match="use the reward 'toy'"):
        check_reward_world("real", "toy:student")
    check_reward_world("real", "real:teacher")
    check_reward_world("some/reward-model", "real:student")  # a reward model scores any text
    run = tmp_path / "my-run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"model": {"student": "real:student"}}))
    assert model_world(str(run)) == "real"
    *_, last = h.chat("Describe the moon.", "real:student", 4, "toy")  # the reply stays, not its score
    assert "real-world model" in last["score_error"] and "score" not in last
    with pytest.raises(WorkbenchError, match="real-world model"):
        h.score_response("Describe the moon.", "the moon is bright at night", "toy", model="real:teacher")


def test_the_judge_scores_chat_replies_with_its_checks(h):
    score = h.score_response(
        "What is 6 times 7? Reply with the number only, no words.", "42", "real", model="real:student"
    )
    assert score["name"] == "real" and score["reward"] == pytest.approx(1.0)
    assert score["details"] == {
        "right answer": True,
        "number_only": True,
        "no empty": True,
        "no echo": True,
        "no repetition": True,
        "stopped": True,
    }
    parts = list(h.chat("Describe cats. Do not use any commas.", "real:teacher", 4, "real"))
    assert parts[-1]["done"] and "no repetition" in parts[-1]["score"]["details"]
    assert h.before_model(None, "real") == "real:student"


def test_advantages_of_a_real_reply_carry_the_rendered_prompt_and_special_tokens(h):
    out = h.advantages("Describe the moon.", "the cat is", "real:teacher", "real:teacher_ref", "real:student")
    rendered = out["prompt_rendered"]  # the tiny tokenizer's chat template, as the model reads it
    assert rendered == "<bos><|user|> Describe the moon. <|end|> <|assistant|> "  # typed words kept
    assert len(out["special"]) == len(out["tokens"]) and out["special"][-1] is True  # the end-of-turn token
    assert not any(out["special"][:-1])


def test_heatmap_of_sub_word_tokens():
    report = {
        "tokens": ["The", " moon", " is", " bright", "ish", " ", "<|im_end|>"],
        "token_ids": [1, 2, 3, 4, 5, 6, 7],
        "advantage": [0.1, -0.2, 0.0, 0.3, -0.5, 0.4, 0.2],
        "logp_dpo": [-1.0] * 7,
        "logp_ref": [-1.0] * 7,
        "special": [False] * 6 + [True],
        "prompt": [{"role": "user", "content": "Describe the moon."}],
        "prompt_rendered": "<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n<|im_start|>user\n"
        "Describe the <moon>.<|im_end|>\n<|im_start|>assistant\n",
    }
    html = views.heatmap_html(report)
    assert "Ġ" not in html
    assert "id='adv-heatmap' class='adv-flush'" in html  # flush chips: sub-word pieces join into words
    assert "<span class='adv-tok'> moon</span>" in html  # the space is part of the text
    assert "<span class='adv-tok'> </span>" in html and "adv-tok'>\u2423" not in html  # a space reads as one
    assert "data-pos='6' data-special" in html and "<span class='adv-tok'>&lt;|im_end|&gt;</span>" in html
    assert f"[data-special] .adv-tok{{{views.QUIET}}}" in html  # special tokens shown quietly
    assert "You are a helpful AI assistant" in html  # the default system prompt is shown
    assert "Describe the &lt;moon&gt;." in html and "<b>" not in html  # escaped; no markup element of ours
    word_level = {**report, "tokens": ["the", "moon", "is", "bright", "ish", ".", "<|end|>"]}
    assert "id='adv-heatmap' class=''" in views.heatmap_html(word_level)
