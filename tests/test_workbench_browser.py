"""The workbench in a real browser (Playwright driving Debian's chromium) on the quick toy world.

Screenshots go to test-artifacts/ (ignored by git): look at them after a change to the layout.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from adpa_core.runs import RunDir
from tests.workbench_kit import finished_run, free_port
from workbench.jobs import pid_alive

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
CHAT_PROMPT = "hey you , what city is lea webb in ?"  # "hey" prompts draw rude replies from the SFT student
LONG = 120_000  # ms: model loads and a training subprocess on a busy 2-core machine


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (make browser-deps installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def url(browser, toy_home, tmp_path_factory):
    from workbench.app import build_app

    runs = tmp_path_factory.mktemp("browser-runs")
    finished_run(runs, "sft-done", steps=30)
    app = build_app(toy_home, str(runs))
    app.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        yield app.local_url
    finally:
        app.close()
        for run in runs.iterdir():  # a failed test must not leave a training process behind
            status = RunDir(run).read_status()
            pid = status.get("pid")
            if status.get("state") in ("queued", "running") and pid != os.getpid() and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def page(browser, url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(LONG)
    page.goto(url)
    yield page
    context.close()


def shot(page, name: str, full_page: bool = True) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def test_heatmap(page):
    page.wait_for_selector("#adv-heatmap .adv-token")  # the example is computed on load
    page.locator("#compute-advantages").click()
    page.wait_for_selector("#adv-alternatives .main-svg")
    page.wait_for_selector("#adv-expected .main-svg")
    chips = page.locator("#adv-heatmap .adv-token")
    n = chips.count()
    assert n > 5 and "A(s_t, y_t) =" in chips.first.get_attribute("title")
    assert page.locator("#adv-token-table [role=grid]").get_attribute("aria-rowcount") == str(n + 1)
    assert "implicit reward" in page.locator("#adv-summary").inner_text()
    shot(page, "workbench-advantages")
    page.locator("#adv-token-table [role=row][aria-rowindex='4'] [role=gridcell]").nth(1).click()
    page.wait_for_function("() => document.body.innerText.includes('Position 2:')")
    # markup in a prompt or reply is shown as text, never run
    page.locator("#adv-prompt textarea").fill("<b>bold</b> which city is nia baker from ?")
    page.locator("#adv-response textarea").fill(
        "<script>window.pwned = 1</script> <img src=x onerror=alert(1)>"
    )
    page.locator("#compute-advantages").click()
    page.wait_for_function("() => document.querySelector('#adv-heatmap').innerText.includes('<b>bold</b>')")
    assert page.evaluate("() => window.pwned === undefined")
    assert page.locator("#adv-heatmap script, #adv-heatmap img, #adv-heatmap b").count() == 0


def logged_steps(page) -> int:
    title = page.locator("#run-curve .gtitle").text_content() or ""
    found = re.search(r"\((\d+) logged steps\)", title)
    return int(found.group(1)) if found else 0


def test_align_run_curve_reload_and_cancel(page):
    page.get_by_role("tab", name="Align").click()
    page.locator("#run-name textarea, #run-name input").first.fill("ui-adpa")
    page.locator("#run-steps input").first.fill("60")
    page.get_by_text("Models and data").click()
    page.get_by_label("Use the first N examples (0: all)").fill("32")
    page.locator("#start-run").click()
    page.wait_for_selector("#run-progress[data-state='running']")
    page.wait_for_function("() => +document.querySelector('#run-progress').dataset.step > 0")
    page.wait_for_selector("#run-curve .main-svg")
    first = logged_steps(page)
    page.wait_for_function(
        f"() => /\\((\\d+) logged steps\\)/.exec(document.querySelector('#run-curve .gtitle')?.textContent"
        f" || '')?.[1] > {first}"
    )
    assert logged_steps(page) > first >= 1
    assert "ETA" in page.locator("#run-progress").inner_text()
    shot(page, "workbench-align")
    # one run at a time: a second start is refused with the running run's name
    page.locator("#run-name textarea, #run-name input").first.fill("ui-second")
    page.locator("#start-run").click()
    page.get_by_text(re.compile("one run at a time")).first.wait_for()
    # a page reload shows the same run, still going, read back from disk
    page.reload()
    page.get_by_role("tab", name="Align").click()
    page.wait_for_selector("#run-progress[data-state='running']")
    assert "ui-adpa" in page.locator("#run-progress").inner_text()
    page.wait_for_selector("#run-curve .main-svg")
    shot(page, "workbench-align-reloaded")
    page.locator("#cancel-run").click()
    page.wait_for_selector("#run-progress[data-state='cancelled']")
    assert "cancelled" in page.locator("#runs-table").inner_text()
    page.locator("#runs-table [role=gridcell]", has_text="sft-done").first.click()  # show a past run
    page.wait_for_selector("#run-progress[data-state='completed']")
    assert "sft-done" in page.locator("#run-progress").inner_text()


def test_chat_compare_and_open_in_advantages(page):
    page.wait_for_selector("#adv-heatmap .adv-token")
    page.get_by_role("tab", name="Chat").click()
    page.locator("#chat-prompt textarea").fill(CHAT_PROMPT)
    page.locator("#chat-compare").click()
    for panel in ("before", "after", "teacher"):
        page.wait_for_function(
            f"() => (document.querySelector('#chat-{panel}-score')?.innerText || '').includes('reward')"
        )
    assert "sft-done" in page.locator("body").inner_text()
    shot(page, "workbench-chat", full_page=False)
    reply = page.locator("#chat-after textarea").input_value()
    assert reply
    page.locator("#chat-after-open").click()
    page.wait_for_function(
        "(reply) => document.querySelector('#adv-response textarea')?.value === reply", arg=reply
    )
    assert page.locator("#adv-student textarea, #adv-student input").first.input_value() == "sft-done"
    page.wait_for_function(
        "(reply) => document.querySelector('#adv-heatmap')?.innerText.includes(reply.split(' ')[0])",
        arg=reply,
    )
