"""Bad run configs: each fails with one ConfigError line that names the file and the setting to change.

Every case goes through the YAML loader (`load_config`, with `--set` overrides where given), the way
`adpa train CONFIG.yaml --set ...` reads it, and must leave the folder as it was.
"""

from __future__ import annotations

import pytest
import torch

from adpa_core import cli
from adpa_core import losses as L
from adpa_core.config import ConfigError, ObjectiveConfig, load_config
from adpa_core.objectives import term_per_token
from adpa_core.teacher import TeacherTargets
from tests.robustness.kit import clear_error
from tests.tiny import make_llama, make_tokenizer

FILE = r"run\.yaml: "
TEACHERS = "model:\n  teacher: t\n  teacher_ref: r\n"

# (YAML text, --set overrides, regex after "run.yaml: ")
CASES = {
    "unknown method": (
        "objective:\n  method: ppo\n",
        [],
        r"objective\.method='ppo' is not valid; choose one of sft, dpo, kd, dckd, adpa, adpa_plus",
    ),
    "negative learning rate": (
        "train:\n  learning_rate: -1e-4\n",
        [],
        r"train\.learning_rate=-0\.0001 must be a positive number",
    ),
    "zero learning rate": (
        "train:\n  learning_rate: 0\n",
        [],
        r"train\.learning_rate=0\.0 must be a positive",
    ),
    "NaN learning rate": (
        "train:\n  learning_rate: .nan\n",
        [],
        r"train\.learning_rate=nan must be a positive",
    ),
    "max_prompt_length >= max_length": (
        "data:\n  max_length: 128\n  max_prompt_length: 128\n",
        [],
        r"data\.max_prompt_length=128 must be smaller than data\.max_length=128",
    ),
    "adpa without a teacher": (
        "objective:\n  method: adpa\n",
        [],
        r"objective\.method=adpa needs a teacher: set model\.teacher",
    ),
    "adpa without the reference teacher": (
        "objective:\n  method: adpa\nmodel:\n  teacher: t\n",
        [],
        r"objective\.method=adpa needs the reference teacher: set model\.teacher_ref, or "
        r"model\.teacher_adapter",
    ),
    "dckd without a teacher": ("objective:\n  method: dckd\n", [], r"objective\.method=dckd needs a teacher"),
    "top-k of size 0": (
        "objective:\n  method: adpa\n  k: 0\n" + TEACHERS,
        [],
        r"objective\.k=0 must be >= 1",
    ),
    "no-reference ablation with top-k support": (
        "objective:\n  method: adpa\n  use_reference: false\n" + TEACHERS,
        [],
        r"objective\.use_reference=false .* needs objective\.support=full",
    ),
    "clip upside down": (
        "objective:\n  clip: [1, 0]\n",
        [],
        r"objective\.clip=\[1\.0, 0\.0\] must be \[lo, hi\]",
    ),
    "cache without its folder": (
        "objective:\n  teacher_source: cache\n",
        [],
        r"objective\.teacher_source=cache needs objective\.teacher_cache",
    ),
    "SFT data for DPO": (
        "data:\n  format: sft\nobjective:\n  method: dpo\n",
        [],
        r"data\.format=sft has no rejected responses; objective\.method=dpo needs data\.format=preference",
    ),
    # ---- precision and quantization contradictions
    "4-bit student with full fine-tuning": (
        "model:\n  student_quantization: 4bit\n",
        [],
        r"model\.student_quantization=4bit needs model\.lora=true",
    ),
    "fp16 autocast over bf16 weights": (
        "model:\n  dtype: bfloat16\ntrain:\n  mixed_precision: fp16\n",
        [],
        r"train\.mixed_precision=fp16 contradicts model\.dtype=bfloat16",
    ),
    "fp16 autocast over fp16 weights, full fine-tuning": (
        "model:\n  dtype: float16\ntrain:\n  mixed_precision: fp16\n",
        [],
        r"train\.mixed_precision=fp16 with model\.dtype=float16 .* "
        r"use model\.dtype=float32 .*or model\.lora=true",
    ),
    "quantized teacher without a teacher": (
        "model:\n  teacher_quantization: 8bit\n",
        [],
        r"model\.teacher_quantization is set but there is no model\.teacher",
    ),
    "adapter teacher and a reference teacher": (
        "model:\n  teacher: t\n  teacher_ref: r\n  teacher_adapter: a\n",
        [],
        r"model\.teacher_adapter and model\.teacher_ref are both set",
    ),
    "unknown dtype": ("model:\n  dtype: fp8\n", [], r"model\.dtype='fp8' is not valid; choose one of auto"),
    # ---- keys and types
    "misspelt key": (
        "objective:\n  metod: dpo\n",
        [],
        r"unknown key objective\.metod; did you mean objective\.method\? valid keys here: method",
    ),
    "misspelt section": ("trian:\n  max_steps: 3\n", [], r"unknown key trian; did you mean train\?"),
    "unknown key, nothing close": (
        "objective:\n  zzz: 1\n",
        [],
        r"unknown key objective\.zzz; valid keys here: method",
    ),
    "non-string keys": ("1: 2\ntrain: {}\n", [], r"unknown key 1; valid keys here"),
    "text for an integer": ("train:\n  max_steps: ten\n", [], r"train\.max_steps='ten' must be an integer"),
    "fraction for an integer": (
        "train:\n  batch_size: 2.5\n",
        [],
        r"train\.batch_size=2\.5 must be an integer",
    ),
    "yes for a boolean": ("model:\n  lora: yes\n", [], r"model\.lora='yes' must be true or false"),
    "number too large": (
        "train:\n  learning_rate: 1" + "0" * 400 + "\n",
        [],
        r"train\.learning_rate=10+ is too large for a number",
    ),
    "section that is not a mapping": ("train: 5\n", [], r"train must be a mapping, got int"),
    "run name with a path": ("name: ../escape\n", [], r"name='\.\./escape' must be non-empty"),
    # ---- the YAML itself
    "YAML syntax error": (
        "train:\n  max_steps: 3\n  warmup_ratio: [0.1\nmodel: {}\n",
        [],
        r"not valid YAML at line 4, column \d+: .*\(while parsing a flow sequence started at line 3\)",
    ),
    "tab indentation": (
        "train:\n\tmax_steps: 3\n",
        [],
        r"not valid YAML at line 2, column 1: found character '\\t'",
    ),
    "python tag": (
        "name: !!python/object/apply:os.system ['echo hi']\n",
        [],
        r"not valid YAML at line 1, column 7: could not determine a constructor",
    ),
    "impossible date": (
        "name: 2001-02-30\n",
        [],
        r"not valid YAML: a value cannot be read \(day is out of range",
    ),
    "list at the top": ("- train\n- model\n", [], r"the top level must be a mapping of sections, got list"),
    # ---- --set overrides
    "override without '='": ("name: r\n", ["train.max_steps"], r"override 'train\.max_steps' must look like"),
    "override with an empty key part": (
        "name: r\n",
        [".max_steps=3"],
        r"override '\.max_steps=3' has an empty key",
    ),
    "override value not YAML": (
        "name: r\n",
        ["train.max_steps=[1"],
        r"override 'train\.max_steps=\[1': not valid YAML at line 1, column 3",
    ),
    "override below a value": (
        "train:\n  learning_rate: 0.001\n",
        ["train.learning_rate.peak=1"],
        r"override 'train\.learning_rate\.peak=1': learning_rate is not a section",
    ),
    "override of a misspelt section": (
        "name: r\n",
        ["trian.max_steps=3"],
        r"unknown key trian; did you mean train\?",
    ),
    "override out of range": (
        "name: r\n",
        ["train.max_steps=-1"],
        r"train\.max_steps=-1 must be an integer >= 1",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_config_fails_clearly(name, tmp_path):
    text, overrides, pattern = CASES[name]
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    with clear_error(ConfigError, FILE + pattern, untouched=tmp_path):
        load_config(path, overrides)


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"", r"run\.yaml is empty \(no settings\)"),
        (b"# nothing but a comment\n", r"run\.yaml is empty \(no settings\)"),
        (b"name: r\xff\n", r"cannot read config file .*run\.yaml: 'utf-8' codec can't decode byte 0xff"),
        (None, r"config file not found: .*run\.yaml"),
    ],
    ids=["empty file", "comments only", "not UTF-8", "missing file"],
)
def test_unreadable_config_files(content, pattern, tmp_path):
    path = tmp_path / "run.yaml"
    if content is not None:
        path.write_bytes(content)
    with clear_error(ConfigError, pattern, untouched=tmp_path):
        load_config(path)


def test_the_cli_prints_one_error_line_and_creates_no_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text(
        "objective:\n  method: dpo\ntrain:\n  max_steps: 2\n", encoding="utf-8"
    )
    assert cli.main(["train", "run.yaml", "--set", "train.learnig_rate=1e-3"]) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean train.learning_rate?" in err and err.startswith("error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml"]  # no runs/ folder, nothing half-made


# ---------------------------------------------------------------- top-k k against the vocabulary


def test_topk_larger_than_the_vocabulary_is_the_full_support():
    """k is checked (>= 1) in the config, which cannot know V. Where V is known, k > V is clamped to V,
    and the top-V support is the whole vocabulary: the ADPA term equals `support: full` exactly."""
    tok = make_tokenizer()
    vocab = len(tok)
    student, dpo, ref = (make_llama(tok, hidden=32, layers=1, seed=s) for s in (0, 1, 2))
    input_ids = tok(["hello world the cat sat on the mat"], return_tensors="pt")["input_ids"]  # (1, T)
    labels = torch.cat([input_ids[:, 1:], torch.full((1, 1), L.IGNORE_INDEX)], dim=1)  # (1, T)
    with torch.no_grad():
        logits = {name: m(input_ids=input_ids).logits for name, m in [("s", student), ("d", dpo), ("r", ref)]}
    targets = TeacherTargets(dpo_logits=logits["d"], ref_logits=logits["r"])
    huge_k = ObjectiveConfig(method="adpa", k=10 * vocab)
    full = ObjectiveConfig(method="adpa", support="full")
    got = term_per_token("adpa", logits["s"], labels, targets, huge_k)  # (1, T)
    want = term_per_token("adpa", logits["s"], labels, targets, full)  # (1, T)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    with clear_error(ValueError, r"topk=0 must be >= 1"):
        L.token_advantages(logits["d"], logits["r"], topk=0)
