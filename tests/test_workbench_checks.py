"""What the workbench checks and says: the Align form validated before Start, fresh run names, unknown
words, the fixed colour scale, long replies, errors in one line with the traceback kept in the log."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from adpa_core.config import ConfigError, ModelConfig
from adpa_core.runs import RunDir
from tests.workbench_kit import FORM, TRACEBACK, fake_run, finished_run
from workbench import figures, run_views, views
from workbench.handlers import Handlers
from workbench.jobs import RunManager
from workbench.locations import Locations, WorkbenchError
from workbench.run_form import build_config, fresh_run_name
from workbench.tabs import named_range
from workbench.vocab import known_case, unknown_count, vocabulary_notes

PROMPT = "which city is nia baker from ?"


@pytest.fixture(scope="module")
def h(toy_home, tmp_path_factory) -> Handlers:
    loc = Locations.create(toy_home, tmp_path_factory.mktemp("check-runs"))
    return Handlers(loc, RunManager(loc))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"learning_rate": 0}, r"Learning rate: train\.learning_rate=0\.0 must be a positive number"),
        ({"steps": None}, r"Steps is empty"),
        ({"steps": 2.5}, r"Steps=2\.5 is not a valid number"),
        (
            {"lora_rank": 100_000},
            r"LoRA rank: model\.lora_r=100000 is larger than the student's hidden size 64",
        ),
        ({"lora_rank": -1}, r"LoRA rank=-1: give 0"),
        ({"gamma": -1}, r"γ \(ADPA weight\): objective\.gamma=-1\.0 must be >= 0"),
        ({"gamma": None}, r"γ \(ADPA weight\) is empty"),
        ({"beta": 0}, r"β: objective\.beta=0\.0 must be a positive number"),
        ({"max_examples": -3}, r"Use the first N examples=-3: give 0"),
        ({"teacher": "toy:nope"}, r"DPO teacher: unknown toy model 'toy:nope'"),
        ({"teacher": "no-such-model"}, r"DPO teacher: could not load the model from 'no-such-model'"),
        ({"student": "toy:nope"}, r"Student: unknown toy model"),
        ({"teacher_ref": ""}, r"the Reference teacher is empty"),
        ({"data": "/etc/passwd"}, r"Preference data '/etc/passwd' is outside"),
        ({"method": "adpa_plus"}, r"ADPA\+ starts from: ADPA\+ starts from a finished DCKD run"),
    ],
)
def test_start_refuses_what_adpa_train_would_refuse_in_one_line(h, change, message):
    settings = {**FORM, "name": h.fresh_run_name("adpa"), **change}
    with pytest.raises(WorkbenchError) as err:
        h.start_run(settings)
    text = str(err.value)
    assert re.match(message, text), text
    assert "\n" not in text and "Traceback" not in text
    assert not (h.loc.runs_dir / settings["name"]).exists() and not h.jobs._procs  # nothing written or run


def test_fields_a_method_does_not_read_are_ignored(h):
    """alpha is hidden for ADPA: an empty alpha there is no error, and every shown field is used."""
    cfg = build_config(h.loc, "x", {**FORM, "alpha": None, "gamma": 0.7})
    assert cfg.objective.gamma == 0.7 and cfg.train.learning_rate == FORM["learning_rate"]
    assert cfg.train.max_steps == FORM["steps"]


def test_adpa_train_refuses_a_lora_rank_wider_than_the_student(toy_home):
    from adpa_core.models import load_student

    with pytest.raises(ConfigError, match="model.lora_r=65 is larger than the student's hidden size 64"):
        load_student(ModelConfig(student="toy:student", lora=True, lora_r=65), "cpu")
    assert load_student(ModelConfig(student="toy:student", lora=True, lora_r=64), "cpu") is not None


def test_default_run_names_are_fresh(h):
    first = fresh_run_name("adpa_plus", h.loc.runs_dir)
    assert first.startswith("adpa-plus-")
    (h.loc.runs_dir / first).mkdir()
    second = fresh_run_name("adpa_plus", h.loc.runs_dir)
    assert second != first and not (h.loc.runs_dir / second).exists()
    from workbench.app import on_load

    assert not (h.loc.runs_dir / on_load(h, "sft")[-1]).exists()


def test_words_outside_the_vocabulary_are_lower_cased_or_counted(h):
    report = h.advantages("Which City is Nia Baker from ?", "Lima , Zorblax .")
    assert report["tokens"][:2] == ["lima", ","] and report["tokens"][2] == "<unk>"
    assert report["unknown"] == {"prompt": 0, "response": 1}
    assert any("lower-cased 5 word(s)" in n and "Which → which" in n for n in report["notes"])
    assert any(n.startswith("1 of 5 reply tokens and 0 prompt token(s)") for n in report["notes"])
    summary = views.summary_markdown(report, scale=0.25)
    assert "&lt;unk&gt;" in summary and "&amp;lt;" not in summary  # escaped once, shown as <unk>


def char_tokenizer():
    """A character-level BPE tokenizer (lower-case letters only) with an unknown token: not word-level."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, **{c: i + 1 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz.")}}
    backend = Tokenizer(models.BPE(vocab, [], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def test_unknown_tokens_for_any_tokenizer_with_an_unk_token():
    tok = char_tokenizer()
    text, lowered = known_case(tok, "Hello wörld. OK")
    assert text == "hello wörld. ok" and lowered == [("Hello", "hello"), ("OK", "ok")]
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert unknown_count(tok, ids) == 1  # the ö
    counts, notes = vocabulary_notes(tok, "HI", ids, lowered)
    assert counts == {"prompt": 2, "response": 1} and len(notes) == 2
    no_unk = SimpleNamespace(unk_token_id=None)  # byte-level tokenizers read every text
    assert known_case(no_unk, "Hello") == ("Hello", []) and unknown_count(no_unk, [0, 1]) == 0


def report_of(advantages: list[float], tokens: list[str] | None = None) -> dict:
    """A plain advantage report (the handler's shape) for the views, without models."""
    n = len(advantages)
    tokens = tokens or [f"w{t}" for t in range(n)]
    alt = lambda t, j: {  # noqa: E731
        "token": f"a{j}",
        "token_id": 1000 + j if j else t,
        "advantage": advantages[t] / (j + 1),
        "p_dpo": 0.5 / (j + 1),
        "p_ref": 0.4,
        "p_student": 0.3,
    }
    return {
        "prompt": [{"role": "user", "content": "q"}],
        "tokens": tokens,
        "token_ids": list(range(n)),
        "advantage": advantages,
        "logp_dpo": [-1.0] * n,
        "logp_ref": [-1.0] * n,
        "student_logp": [-1.0] * n,
        "alternatives": [[alt(t, j) for j in range(4)] for t in range(n)],
        "teacher_expected_advantage": [0.1] * n,
        "expected_advantage": [0.0] * n,
        "total": sum(advantages),
        "beta": 1.0,
        "support": "topk",
        "support_k": 20,
        "no_reference": False,
        "notes": [],
        "worst": [
            {"index": i, "token": tokens[i], "advantage": advantages[i]}
            for i in sorted(range(n), key=advantages.__getitem__)
            if advantages[i] < 0
        ],
    }


def chip_styles(html: str) -> list[str]:
    return re.findall(r"class='adv-token'[^>]*style='([^']*)'", html)


def test_the_colour_scale_is_fixed_symmetric_and_labelled():
    strong = views.heatmap_html(report_of([0.30, -3.68]), scale=2.0)
    weak = views.heatmap_html(report_of([0.30, -0.10]), scale=2.0)
    (pos, neg), (pos_again, small) = chip_styles(strong), chip_styles(weak)
    assert pos == pos_again  # the same advantage, the same colour, whatever else the reply holds
    alpha = lambda style: float(re.search(r"rgba\([^)]*,([0-9.]+)\)", style).group(1))  # noqa: E731
    assert alpha(pos) == pytest.approx(0.06 + 0.84 * 0.15, abs=0.005) and alpha(neg) == pytest.approx(0.90)
    assert alpha(small) < alpha(pos) < alpha(neg)
    for tick in (">-2<", ">-1<", ">0<", ">+1<", ">+2<"):  # the legend's numbers
        assert tick in strong
    assert "fixed scale ±2" in strong
    # the outline marks the most negative token only when it is meaningfully negative (A <= -0.2 here)
    assert strong.count("outline: 2px") == 1 and "outline: 2px" in chip_styles(strong)[1]
    assert "outline: 2px" not in weak and "none is outlined" in weak
    assert "w1" not in views.summary_markdown(report_of([0.3, -0.1]), 2.0)  # not listed as most negative
    heat = figures.alternatives_figure(report_of([0.3, -3.68]), 2.0).data[0]
    assert (heat.zmin, heat.zmax) == (-2.0, 2.0)  # the plot shares the heatmap's scale


def test_chips_are_focusable_buttons_that_say_their_numbers_for_any_token():
    html = views.heatmap_html(report_of([0.5, -0.5, 0.0], [" Hel", "lo", "\n"]))
    chips = re.findall(r"<span class='adv-token'[^>]*>", html)
    assert len(chips) == 3 and all("tabindex='0'" in c and "role='button'" in c for c in chips)
    assert "data-pos='2'" in chips[2] and "aria-label='position 0: &#x27; Hel&#x27; · A = +0.5000" in chips[0]
    assert "↵" in html  # a newline token is shown as a symbol


def test_a_long_reply_plots_a_window_and_says_so(h):
    long = report_of([-0.01 * (t % 7) for t in range(1000)])
    long["advantage"][700] = -5.0
    fig = figures.alternatives_figure(long)
    columns = fig.data[0].x
    assert len(columns) == figures.MAX_POSITIONS and columns[0].startswith(
        f"{700 - figures.MAX_POSITIONS // 2}:"
    )
    assert "of 1000, around the most negative token" in fig.layout.title.text
    assert len(fig.layout.shapes) == figures.MAX_POSITIONS  # one frame per column (the reply's token is #1)
    moved = figures.alternatives_figure(long, centre=100)  # the map follows the inspected position
    assert "100:w100" in moved.data[0].x and "around the inspected position" in moved.layout.title.text
    assert list(figures.expected_figure(long).data[0].x) == list(range(1000))  # numbered, not labelled
    report = h.advantages(PROMPT, " ".join(["lima ."] * 150))  # 301 tokens: past the toy context of 128
    assert len(report["tokens"]) == 301
    assert any("longer than the models' context of 128" in n for n in report["notes"])


def test_a_bad_reward_keeps_the_replies_and_says_why_once(h):
    parts = list(h.chat(PROMPT, "toy:student", 8, "no-such-reward"))
    assert parts[-1]["done"] and parts[-1]["text"] and "score" not in parts[-1]
    assert parts[-1]["score_error"] and "no reward (see the note above)" in run_views.score_markdown(
        parts[-1]
    )
    why = h.check_reward("no-such-reward")
    assert why.startswith("Reward 'no-such-reward': ") and "\n" not in why
    assert h.check_reward("toy") == ""


def test_a_failed_run_says_why_in_one_line_and_offers_its_log(h):
    fake_run(h.loc.runs_dir, "failed-run", error="KeyError: 3", log=TRACEBACK + "error: KeyError: 3\n")
    status = h.run_status("failed-run")
    html = run_views.progress_html(status)
    assert status["error_line"] == "KeyError: 3" and "KeyError: 3" in html
    assert "Traceback" not in html and "x.py" not in html and html.count("KeyError") == 1
    assert "Traceback" in Path(h.run_log("failed-run")).read_text()  # the whole log, for download
    fake_run(h.loc.runs_dir, "crashed-run", error="", log="loading\r 50%\nerror: the teacher is gone\n")
    status = h.run_status("crashed-run")
    assert status["display"] == "crashed"
    assert status["error_line"].endswith("error: the teacher is gone")


def test_before_step_one_the_preparation_shows_its_own_progress(toy_home, tmp_path):
    run = RunDir(finished_run(tmp_path, "adpa-run", method="adpa", steps=1, max_examples=12))
    status = run.read_status()
    assert status["phase"] == "y_hat" and status["phase_done"] == status["phase_total"] == 12
    preparing = {**status, "name": "adpa-run", "method": "adpa", "display": "running", "step": 0}
    preparing.update(phase_done=4, phase_eta_s=30.0)
    html = run_views.progress_html(preparing)
    assert "the student's own replies (y_hat) 4 / 12 prompts" in html and "ETA" in html
    loading = {"name": "s", "method": "sft", "display": "running", "step": 0, "max_steps": 5}
    assert "y_hat" not in run_views.progress_html(loading)  # ADPA's phase is named for ADPA only
    assert "y_hat" in run_views.progress_html({**loading, "method": "adpa"})


def test_range_errors_name_their_field():
    box = named_range(gr.Number(1.0, label="β", minimum=1e-6))
    assert box.preprocess(0.5) == 0.5
    with pytest.raises(gr.Error) as err:
        box.preprocess(0)
    assert err.value.message == "β=0: give a value at least 1e-06"
    slider = named_range(gr.Slider(2, 20, label="alternatives shown (top-k)"))
    with pytest.raises(gr.Error) as err:
        slider.preprocess(30)
    assert err.value.message == "alternatives shown (top-k)=30: give a value from 2 to 20"


def test_the_figure_benchmark_runs_and_results_md_shows_its_recorded_run(tmp_path, monkeypatch):
    from benchmarks import workbench_figures as bench

    monkeypatch.setenv("ADPA_BENCH_OUT", str(tmp_path))
    payload = bench.main(["--quick", "--repeats", "1"])
    written = json.loads((tmp_path / "workbench_figures.json").read_text())
    assert {"benchmark", "command", "machine", "config", "results", "targets"} <= set(written)
    assert [r["tokens"] for r in payload["results"]] == list(bench.QUICK_LENGTHS)
    assert all(r["one_pass_s"] > 0 and r["views_s"] > 0 for r in payload["results"])
    root = Path(__file__).resolve().parent.parent
    recorded = json.loads((root / "benchmarks/recorded/workbench_figures.json").read_text())
    assert bench.results_section(recorded) in (root / "benchmarks/RESULTS.md").read_text()
    assert all(t["met"] for t in recorded["targets"])


def test_a_recipes_dpo_adapter_is_checked_too(h, tmp_path):
    from adpa_core.config import config_from_dict
    from workbench.run_form import check_models, recipe

    adapter = finished_run(tmp_path, "lora-teacher", steps=1, lora_rank=4, max_examples=8) / "final"
    data = recipe("adpa")
    data["model"].update(teacher="toy:student", teacher_ref=None, teacher_adapter=str(adapter))
    check_models(config_from_dict(data), h.model_config, h.tokenizer)  # resolves: no error
    data["model"]["teacher_adapter"] = str(tmp_path / "missing")
    with pytest.raises(WorkbenchError, match=r"^DPO teacher adapter: .*does not exist"):
        check_models(config_from_dict(data), h.model_config, h.tokenizer)
