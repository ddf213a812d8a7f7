"""Per-token advantage views (adpa_core.advantage) and `adpa advantages`, on a tiny local teacher pair."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adpa_core import losses as L
from adpa_core.advantage import (
    AdvantageReport,
    batch_sequence_advantages,
    display_scale,
    most_negative_position,
    response_advantages,
)
from adpa_core.cli import EXIT_USER_ERROR, main
from adpa_core.config import ModelConfig
from adpa_core.data import DataError, end_of_turn_id, tokenize_example
from adpa_core.models import TeacherPair, freeze, load_inference_model, load_teacher_pair, load_tokenizer
from tests.tiny import make_llama
from tests.trainkit import build_world

PROMPT = "where is the cat ?"
RESPONSE = "the cat sat on the mat ."


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("advworld"))


@pytest.fixture(scope="module")
def tok(world):
    return load_tokenizer(world["student"])


@pytest.fixture(scope="module")
def pair(world, tok):
    cfg = ModelConfig(
        student=world["student"], teacher=world["teacher"], teacher_ref=world["teacher_ref"], device="cpu"
    )
    return load_teacher_pair(cfg, "cpu", tok)


@pytest.fixture(scope="module")
def student(world):
    return load_inference_model(world["student"], "cpu")[0]


def full_view(pair, tok, prompt=PROMPT, response=RESPONSE, student=None):
    """Training-style tokenization and full-sequence logits (1, L, V) with labels (1, L), for comparisons."""
    ex = tokenize_example(
        tok,
        [{"role": "user", "content": prompt}],
        response,
        max_length=512,
        max_prompt_length=256,
        eot_id=end_of_turn_id(tok),
    )
    ids = torch.tensor([ex["input_ids"]])  # (1, L)
    vocab = len(tok)
    out = {
        "labels": torch.tensor([ex["labels"]]),  # (1, L)
        "dpo": pair.dpo_forward(ids).logits[..., :vocab],  # (1, L, V)
        "ref": pair.ref_forward(ids).logits[..., :vocab] if pair.has_reference else None,
    }
    if student is not None:
        with torch.no_grad():
            out["student"] = student(input_ids=ids).logits[..., :vocab]
    out["mask"] = out["labels"] != L.IGNORE_INDEX  # (1, L)
    return out


def at_labels(x, view):
    """x (1, L, V) at the labels of the counted positions -> (N,)."""
    labels, mask = view["labels"], view["mask"]
    return x.gather(-1, labels.clamp(min=0).unsqueeze(-1))[..., 0][mask]


def close(a, b, rtol=1e-5, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b).double(), rtol=rtol, atol=atol
    )


# ---------------------------------------------------------------- the per-token views


def test_token_advantages_match_losses_and_total_is_the_implicit_reward(pair, tok):
    beta = 0.7
    rep = response_advantages(pair, tok, PROMPT, RESPONSE, beta=beta, k=4)
    view = full_view(pair, tok)
    adv = L.token_advantages(view["dpo"], view["ref"], beta=beta)  # (1, L, V)
    close(rep.advantage, at_labels(adv, view))
    close(rep.logp_dpo, at_labels(torch.log_softmax(view["dpo"], -1), view))
    close(rep.logp_ref, at_labels(torch.log_softmax(view["ref"], -1), view))
    lp = L.sequence_logps(view["dpo"], view["labels"]) - L.sequence_logps(view["ref"], view["labels"])
    close(rep.total, beta * lp[0], atol=1e-5)
    assert rep.total == pytest.approx(sum(rep.advantage), rel=1e-6, abs=1e-6)
    assert rep.token_ids == view["labels"][view["mask"]].tolist()
    assert rep.tokens == [*RESPONSE.split(), "<|end|>"]
    assert tok.decode(rep.token_ids) == RESPONSE + " <|end|>"
    assert not rep.no_reference and not rep.truncated and rep.notes == []
    assert rep.student_logp is None and rep.expected_advantage is None


def test_alternatives_are_the_dpo_teachers_top_k(pair, tok):
    rep = response_advantages(pair, tok, PROMPT, RESPONSE, beta=1.0, k=5)
    view = full_view(pair, tok)
    logp_dpo = torch.log_softmax(view["dpo"], -1)[view["mask"]]  # (N, V)
    logp_ref = torch.log_softmax(view["ref"], -1)[view["mask"]]  # (N, V)
    for t, alts in enumerate(rep.alternatives):
        ids = [a["token_id"] for a in alts]
        assert ids == logp_dpo[t].topk(5).indices.tolist()
        assert [a["token"] for a in alts] == [tok.decode([i]) for i in ids]
        close([a["p_dpo"] for a in alts], logp_dpo[t, ids].exp())
        close([a["p_ref"] for a in alts], logp_ref[t, ids].exp())
        close([a["advantage"] for a in alts], logp_dpo[t, ids] - logp_ref[t, ids], atol=1e-5)
        assert all(a["p_student"] is None for a in alts)
        if rep.token_ids[t] in ids:
            actual = alts[ids.index(rep.token_ids[t])]
            assert actual["advantage"] == pytest.approx(rep.advantage[t], abs=1e-6)


def test_with_k_equal_to_the_vocabulary_the_actual_token_is_always_an_alternative(pair, tok):
    rep = response_advantages(pair, tok, PROMPT, RESPONSE, k=len(tok))
    for t, alts in enumerate(rep.alternatives):
        assert len(alts) == len(tok)
        assert sum(a["p_dpo"] for a in alts) == pytest.approx(1.0, abs=1e-5)
        (actual,) = [a for a in alts if a["token_id"] == rep.token_ids[t]]
        assert actual["advantage"] == pytest.approx(rep.advantage[t], abs=1e-6)
        assert math.log(actual["p_dpo"]) == pytest.approx(rep.logp_dpo[t], abs=1e-5)


@pytest.mark.parametrize(
    ("support", "support_k", "clip"), [("full", 50, None), ("topk", 7, None), ("topk", 7, (-0.5, 0.5))]
)
def test_expected_advantage_is_minus_the_adpa_term(pair, tok, student, support, support_k, clip):
    beta = 1.5
    rep = response_advantages(
        pair,
        tok,
        PROMPT,
        RESPONSE,
        beta=beta,
        k=3,
        student=student,
        support=support,
        support_k=support_k,
        clip=clip,
    )
    view = full_view(pair, tok, student=student)
    topk = support_k if support == "topk" else None
    adv = L.token_advantages(view["dpo"], view["ref"], beta=beta, clip=clip, topk=topk)  # (1, L, V)
    close(rep.expected_advantage, -L.adpa_per_token(view["student"], adv, view["labels"])[view["mask"]])
    close(rep.teacher_expected_advantage, -L.adpa_per_token(view["dpo"], adv, view["labels"])[view["mask"]])
    close(rep.student_logp, at_labels(torch.log_softmax(view["student"], -1), view))
    # independent float64 check at one position: sum over the support of p_student(a) A(a)
    t = 2
    p_s = torch.softmax(view["student"][view["mask"]][t].double(), -1)  # (V,)
    a = beta * (
        torch.log_softmax(view["dpo"][view["mask"]][t].double(), -1)
        - torch.log_softmax(view["ref"][view["mask"]][t].double(), -1)
    )
    if clip is not None:
        a = a.clamp(*clip)
    if topk is not None:
        keep = view["dpo"][view["mask"]][t].topk(topk).indices
        a = torch.zeros_like(a).index_copy(0, keep, a[keep])
    assert rep.expected_advantage[t] == pytest.approx(float((p_s * a).sum()), abs=1e-5)
    p_student = torch.softmax(view["student"], -1)[view["mask"]]  # (N, V)
    for t, alts in enumerate(rep.alternatives):
        close([x["p_student"] for x in alts], p_student[t, [x["token_id"] for x in alts]])
    assert (rep.support, rep.support_k, rep.clip) == (
        support,
        support_k,
        None if clip is None else list(clip),
    )


def test_identical_teachers_give_zero_advantages(pair, tok, student):
    same = TeacherPair(dpo=pair.ref, ref=pair.ref)
    rep = response_advantages(same, tok, PROMPT, RESPONSE, student=student, support="topk", support_k=5)
    assert rep.advantage == [0.0] * len(rep.tokens) and rep.total == 0.0
    assert rep.expected_advantage == [0.0] * len(rep.tokens)
    assert rep.teacher_expected_advantage == [0.0] * len(rep.tokens)
    assert all(a["advantage"] == 0.0 for alts in rep.alternatives for a in alts)
    assert rep.worst(3) == [] and display_scale(rep.advantage) == [0.0] * len(rep.tokens)


def test_token_id_response_and_message_prompt_equal_the_text_path(pair, tok, student):
    text = response_advantages(pair, tok, PROMPT, RESPONSE, k=3, student=student)
    ids = response_advantages(pair, tok, PROMPT, list(text.token_ids), k=3, student=student)
    messages = response_advantages(
        pair, tok, [{"role": "user", "content": PROMPT}], RESPONSE, k=3, student=student
    )
    assert ids.to_dict() == text.to_dict() == messages.to_dict()
    # a y_hat without its end-of-turn token scores only the tokens given
    cut = response_advantages(pair, tok, PROMPT, text.token_ids[:-1], k=3)
    assert cut.token_ids == text.token_ids[:-1]
    assert cut.advantage == pytest.approx(text.advantage[:-1], abs=1e-6)


def test_no_reference_pair(pair, tok):
    beta = 0.5
    alone = TeacherPair(dpo=pair.dpo)
    rep = response_advantages(alone, tok, PROMPT, RESPONSE, beta=beta, k=3)
    assert rep.no_reference and rep.logp_ref is None
    assert rep.advantage == pytest.approx([beta * lp for lp in rep.logp_dpo], abs=1e-6)
    assert rep.total == pytest.approx(beta * sum(rep.logp_dpo), abs=1e-5)
    assert all(a["p_ref"] is None for alts in rep.alternatives for a in alts)
    assert all(v <= 0 for v in rep.advantage)
    topk = response_advantages(alone, tok, PROMPT, RESPONSE, support="topk")
    assert any("support='full'" in note for note in topk.notes)


def test_bad_inputs_are_clear_errors(pair, tok):
    for empty in ("", "   ", []):
        with pytest.raises(ValueError, match="empty"):
            response_advantages(pair, tok, PROMPT, empty)
    with pytest.raises(DataError, match="outside"):
        response_advantages(pair, tok, PROMPT, [3, len(tok) + 5])
    with pytest.raises(ValueError, match="end-of-turn"):
        response_advantages(pair, tok, PROMPT, "yes <|end|> no")
    with pytest.raises(ValueError, match="beta"):
        response_advantages(pair, tok, PROMPT, RESPONSE, beta=0.0)
    with pytest.raises(ValueError, match="support"):
        response_advantages(pair, tok, PROMPT, RESPONSE, support="top")


def test_long_response_is_truncated_with_a_note(pair, tok):
    full = response_advantages(pair, tok, PROMPT, RESPONSE, k=2)
    n_prompt = len(full_view(pair, tok)["labels"][0]) - len(full.tokens)
    cut = response_advantages(pair, tok, PROMPT, RESPONSE, k=2, max_length=n_prompt + 3)
    assert cut.truncated and len(cut.tokens) == 3 and cut.tokens == full.tokens[:3]
    assert cut.advantage == pytest.approx(full.advantage[:3], abs=1e-6)
    assert any("response cut" in n and f"of {len(full.tokens)}" in n for n in cut.notes)


def test_padded_embedding_rows_are_ignored(tok):
    def padded(seed):
        model = make_llama(tok, hidden=32, seed=seed, extra_rows=32)
        with torch.no_grad():  # padded rows that would dominate the softmax if they were not cut away
            model.get_output_embeddings().weight[len(tok) :] *= 200.0
        return freeze(model)

    pair = TeacherPair(dpo=padded(5), ref=padded(6))
    rep = response_advantages(pair, tok, PROMPT, RESPONSE, k=len(tok), student=padded(7))
    view = full_view(pair, tok)
    close(rep.logp_dpo, at_labels(torch.log_softmax(view["dpo"], -1), view))
    assert all(a["token_id"] < len(tok) for alts in rep.alternatives for a in alts)
    assert sum(a["p_student"] for a in rep.alternatives[0]) == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------- batched form and helpers


def test_batch_sequence_advantages_equal_the_report_totals(pair, tok):
    ids = response_advantages(pair, tok, "hello", "yes please").token_ids
    rows = [
        {"prompt": PROMPT, "response": RESPONSE},
        {"prompt": [{"role": "user", "content": "who is it ?"}], "response": "no"},
        {"prompt": "hello", "response": ids},
    ]
    totals = batch_sequence_advantages(pair, tok, rows, beta=0.3, batch_size=2)
    expected = [response_advantages(pair, tok, r["prompt"], r["response"], beta=0.3).total for r in rows]
    assert totals == pytest.approx(expected, rel=1e-5, abs=1e-5)
    alone = batch_sequence_advantages(TeacherPair(dpo=pair.dpo), tok, rows[:1], beta=0.3)
    assert alone == pytest.approx(
        [response_advantages(TeacherPair(dpo=pair.dpo), tok, PROMPT, RESPONSE, beta=0.3).total], abs=1e-5
    )
    with pytest.raises(DataError, match="row 1"):
        batch_sequence_advantages(pair, tok, [rows[0], {"prompt": PROMPT, "response": " "}])


def test_worst_most_negative_and_json_round_trip(pair, tok, student):
    rep = response_advantages(pair, tok, PROMPT, RESPONSE, k=3, student=student)
    i = most_negative_position(rep)
    assert rep.advantage[i] == min(rep.advantage)
    worst = rep.worst(100)
    assert [w["advantage"] for w in worst] == sorted(a for a in rep.advantage if a < 0)
    if worst:
        assert worst[0]["index"] == i and worst[0]["token"] == rep.tokens[i]
    assert len(rep.worst(1)) == min(1, len(worst))
    again = AdvantageReport.from_dict(json.loads(json.dumps(rep.to_dict())))
    assert again == rep


def test_display_scale_is_robust_to_one_outlier():
    values = [0.1 * i for i in range(-10, 11)] + [-12.0]  # one -12 on an end-of-turn token
    scaled = display_scale(values)
    assert scaled[-1] == -1.0
    assert max(abs(v) for v in scaled[:-1]) == pytest.approx(1.0)  # the rest keep their full contrast
    assert scaled[values.index(0.5)] == pytest.approx(0.5)
    many = [math.sin(i) for i in range(300)] + [50.0]
    assert sorted(abs(v) for v in display_scale(many))[len(many) // 2] > 0.5
    assert display_scale([]) == [] and display_scale([0.0, 0.0]) == [0.0, 0.0]
    assert display_scale([0.0, 0.0, 0.0, 0.5]) == [0.0, 0.0, 0.0, 1.0]
    assert display_scale([float("nan"), float("-inf"), 1.0, 2.0]) == [0.0, -1.0, 1.0, 1.0]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), max_size=40), st.floats(0.5, 1.0))
def test_display_scale_properties(values, quantile):
    scaled = display_scale(values, quantile)
    assert len(scaled) == len(values)
    assert all(-1.0 <= s <= 1.0 for s in scaled)
    assert all(
        math.copysign(1, s) == math.copysign(1, v) or s == 0.0 for s, v in zip(scaled, values, strict=True)
    )
    assert all(s == 0.0 for s, v in zip(scaled, values, strict=True) if v == 0.0)
    order = sorted(range(len(values)), key=values.__getitem__)
    assert all(
        scaled[a] <= scaled[b] for a, b in zip(order, order[1:], strict=False)
    )  # colour order follows value order
    assert display_scale([-v for v in values], quantile) == [-s for s in scaled]  # symmetric around 0


# ---------------------------------------------------------------- the `adpa advantages` command


def cli_args(world, *extra):
    return [
        "advantages",
        "--teacher",
        world["teacher"],
        "--teacher-ref",
        world["teacher_ref"],
        "--prompt",
        PROMPT,
        "--response",
        RESPONSE,
        "--device",
        "cpu",
        *extra,
    ]


def test_cli_json_matches_the_library(world, pair, tok, student, capsys):
    assert main(cli_args(world, "--json", "--k", "3", "--beta", "0.5", "--student", world["student"])) == 0
    got = json.loads(capsys.readouterr().out)
    want = response_advantages(pair, tok, PROMPT, RESPONSE, beta=0.5, k=3, student=student).to_dict()
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key == "alternatives":
            assert [[a["token_id"] for a in alts] for alts in got[key]] == [
                [a["token_id"] for a in alts] for alts in value
            ]
        elif isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float)):
            assert got[key] == pytest.approx(value, abs=1e-6), key
        else:
            assert got[key] == value, key


def test_cli_table_prints_the_tokens_and_total(world, pair, tok, capsys):
    assert main(cli_args(world, "--k", "2")) == 0
    out = capsys.readouterr().out
    total = response_advantages(pair, tok, PROMPT, RESPONSE).total
    assert "total advantage" in out and f"{total:+.4f}" in out
    assert "'<|end|>'" in out and "'mat'" in out


def test_cli_user_errors_are_one_line(world, tmp_path, capsys):
    args = cli_args(world)
    args[args.index("--teacher") + 1] = str(tmp_path / "nowhere")
    assert main(args) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "nowhere" in err[0]
    args = cli_args(world)
    args[args.index("--response") + 1] = "  "
    assert main(args) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "empty" in err[0]


def test_cli_toy_names_resolve(world, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("ADPA_HOME", str(tmp_path / "home-without-a-toy-world"))
    args = cli_args(world)
    args[args.index("--teacher") + 1] = "toy:teacher"
    assert main(args) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "toy:teacher" in err[0] and "adpa toy build" in err[0]
