"""The workbench's stable api_names, called through gradio_client against a launched app (toy world)."""

from __future__ import annotations

import math

import pytest

from tests.workbench_kit import finished_run, free_port, start_run_args

API_NAMES = (
    "advantages",
    "alternatives",
    "sample_prompt",
    "generate_response",
    "score_response",
    "start_run",
    "cancel_run",
    "run_status",
    "list_runs",
    "chat_student",
    "chat_aligned",
    "chat_teacher",
)
PROMPT = "which city is nia baker from ?"


@pytest.fixture(scope="module")
def client(toy_home, tmp_path_factory):
    from gradio_client import Client

    from workbench.app import build_app

    runs = tmp_path_factory.mktemp("api-runs")
    finished_run(runs, "sft-done")
    app = build_app(toy_home, str(runs))
    app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield Client(app.local_url, verbose=False)
    finally:
        app.close()


def test_every_api_name_is_served(client):
    served = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(f"/{name}" for name in API_NAMES) <= set(served)


def test_advantages_through_the_api(client):
    out = client.predict(
        PROMPT,
        "whatever , lima .",
        "toy:teacher",
        "toy:teacher_ref",
        "toy:student",
        1.0,
        5,
        "full",
        api_name="/advantages",
    )
    report, summary, heatmap, table = out[0], out[1], out[2], out[5]
    n = len(report["tokens"])
    assert math.isclose(report["total"], sum(report["advantage"]), abs_tol=1e-6)
    assert len(report["expected_advantage"]) == n and len(table["data"]) == n
    assert "implicit reward" in summary and heatmap.count("class='adv-token'") == n
    title, alts = client.predict(report, 0, api_name="/alternatives")
    assert "Position 0" in title and len(alts["data"]) == 5
    # the last inputs (k of a top-k support, colour scale) have defaults; a given k shows in the summary
    models = ("toy:teacher", "toy:teacher_ref", "toy:student")
    out = client.predict(PROMPT, "lima .", *models, 1.0, 5, "topk", 7, 0.5, api_name="/advantages")
    assert out[0]["support_k"] == 7 and "top 7 tokens" in out[1] and "fixed scale ±0.5" in out[2]


def test_errors_name_their_field(client):
    from gradio_client.exceptions import AppError

    args = [PROMPT, "lima .", "toy:teacher", "toy:teacher_ref", "toy:student"]
    with pytest.raises(AppError, match=r"β=0: give a value at least 1e-06"):  # Gradio's range check
        client.predict(*args, 0, 5, "full", api_name="/advantages")
    with pytest.raises(AppError, match=r"Learning rate: train\.learning_rate=0\.0 must be a positive"):
        client.predict(*start_run_args("sft", "lr-zero", 2, learning_rate=0), api_name="/start_run")
    with pytest.raises(AppError, match=r"^Steps is empty"):
        client.predict(*start_run_args("sft", "no-steps", None), api_name="/start_run")


def test_prompts_generation_and_scores_through_the_api(client):
    prompt = client.predict("toy:prompts", "test", api_name="/sample_prompt")
    assert isinstance(prompt, str) and prompt
    reply = client.predict(PROMPT, "student", "toy:student", "toy:teacher", 24, api_name="/generate_response")
    assert isinstance(reply, str) and reply
    score = client.predict(PROMPT, "whatever , lima .", "toy", api_name="/score_response")
    assert "reward" in score and "✗ polite" in score


def test_chats_through_the_api(client):
    heading, text, score = client.predict(PROMPT, "sft-done", 24, "toy", api_name="/chat_student")
    assert "toy:student" in heading and text and "reward" in score
    heading, text, score = client.predict(PROMPT, "sft-done", 24, "toy", api_name="/chat_aligned")
    assert "sft-done" in heading and text and "reward" in score
    heading, text, score = client.predict(
        PROMPT, "toy:teacher", True, 24, "toy", "sft-done", api_name="/chat_teacher"
    )
    assert "Teacher" in heading and text


def test_runs_through_the_api(client):
    from gradio_client.exceptions import AppError

    table = client.predict(api_name="/list_runs")
    assert [row[0] for row in table["data"]] == ["sft-done"]
    progress, _curve, _table, status, log = client.predict("sft-done", api_name="/run_status")
    assert log["visible"] is False and log["value"] is None  # the log is offered for a failed run only
    assert status["display"] == "completed" and status["metrics_rows"] == 2 and "completed" in progress
    assert "not running" in client.predict("sft-done", api_name="/cancel_run")
    with pytest.raises(AppError, match="not valid"):
        client.predict(*start_run_args("sft", "../escape", 2), api_name="/start_run")
    with pytest.raises(AppError, match="already exists"):
        client.predict(*start_run_args("sft", "sft-done", 2), api_name="/start_run")
