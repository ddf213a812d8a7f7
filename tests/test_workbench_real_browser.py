"""The workbench in a real browser on the real-model world (SmolLM2, the `real_home` fixture): it opens on
that world once built, shows a heatmap of real sub-word text with the default system prompt, trains a short
ADPA run with live curves, and chats with judge scores.

Screenshots go to test-artifacts/ (ignored by git; docs/screenshots holds the ones the README shows)."""

from __future__ import annotations

import pytest

from tests.workbench_kit import browser, open_page, serving, shot  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.real]

LONG = 900_000  # ms: SmolLM2 on a busy 2-core machine (a short ADPA run generates y_hat first)
PROMPT = "What is the capital of Japan? Answer with one word only, nothing else."


@pytest.fixture(scope="module")
def page(browser, real_home, tmp_path_factory):  # noqa: F811
    """One page on the workbench served on the real world's home, kept across the tests (they follow one
    another: the run the Align test trains is the one the Chat test compares)."""
    from workbench.app import build_app

    runs = tmp_path_factory.mktemp("real-browser-runs")
    app = build_app(real_home, str(runs))
    with serving(app, runs) as url, open_page(browser, url) as page:
        page.set_default_timeout(LONG)
        yield page


def test_opens_on_the_real_world_with_a_heatmap_of_real_text(page):
    page.wait_for_selector("#adv-heatmap .adv-token")  # the world's example is computed on load
    assert page.locator("#world input[value='real']").is_checked()
    assert page.locator("#adv-student textarea, #adv-student input").first.input_value() == "real:student"
    assert "same model" in page.locator("#world-note").inner_text()
    header = page.locator("#adv-heatmap .adv-prompt-rendered").inner_text()
    assert "You are a helpful AI assistant" in header  # the default system prompt, as the model reads it
    assert page.locator("#adv-heatmap .adv-token[data-special]").count() >= 1  # <|im_end|>, shown quietly
    assert "Ġ" not in page.locator("#adv-heatmap").inner_text()
    assert not page.locator("#build-real").is_visible()  # built: no build button
    shot(page, "workbench-real-advantages")


def test_a_short_adpa_run_with_live_curves(page):
    page.get_by_role("tab", name="Align").click()
    assert page.locator("#run-steps input").first.input_value() == "30"  # the real recipe's steps
    page.locator("#run-name textarea, #run-name input").first.fill("real-adpa-ui")
    page.locator("#run-steps input").first.fill("4")
    page.get_by_text("Models and data").click()
    page.get_by_label("Use the first N examples (0: all)").fill("8")
    page.locator("#start-run").click()
    page.wait_for_selector("#run-progress[data-state='running']")
    page.wait_for_function("() => +document.querySelector('#run-progress').dataset.step >= 2")
    page.wait_for_selector("#run-curve .main-svg")
    shot(page, "workbench-real-align")
    page.wait_for_selector("#run-progress[data-state='completed']")


def test_chat_with_judge_scores(page):
    page.get_by_role("tab", name="Chat").click()
    page.locator("#chat-run input").first.fill("real-adpa-ui")
    page.locator("#chat-run input").first.press("Enter")
    page.locator("#chat-prompt textarea").fill(PROMPT)
    page.locator("#chat-compare").click()
    for panel in ("before", "after", "teacher"):
        page.wait_for_function(
            f"() => (document.querySelector('#chat-{panel}-score')?.innerText || '').includes('(real)')"
        )
    scores = page.locator("#chat-before-score").inner_text()
    assert "one_word" in scores and "right answer" in scores  # the judge's own checks
    assert "real-adpa-ui" in page.locator("body").inner_text()
    shot(page, "workbench-real-chat", full_page=False)
