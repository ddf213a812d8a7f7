"""The Align tab in a real browser (Playwright driving Debian's chromium) on the quick toy world: the form
checked before Start, fresh run names, fields per method, a failed run's one line and log, and a real run
with its curve, a reload and Cancel."""

from __future__ import annotations

import re
import urllib.request

import pytest

from tests.workbench_kit import TRACEBACK, browser, fake_run, open_page, served, shot, url  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DEFAULT_NAME = re.compile(r"^adpa-\d{4}-\d{6}(-\d+)?$")


@pytest.fixture
def page(browser, served):  # noqa: F811
    with open_page(browser, served[0]) as page:
        page.get_by_role("tab", name="Align").click()
        page.wait_for_function("() => document.querySelector('#run-name textarea, #run-name input')?.value")
        yield page


def logged_steps(page) -> int:
    title = page.locator("#run-curve .gtitle").text_content() or ""
    found = re.search(r"\((\d+) logged steps\)", title)
    return int(found.group(1)) if found else 0


def test_align_run_curve_reload_and_cancel(page):
    field(page, "run-name").fill("ui-adpa")
    field(page, "run-steps").fill("60")
    page.get_by_text("Models and data").click()
    page.get_by_label("Use the first N examples (0: all)").fill("32")
    page.locator("#start-run").click()
    page.wait_for_selector("#run-progress[data-state='running']")
    assert DEFAULT_NAME.match(field(page, "run-name").input_value())  # the next Start gets a new name
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
    field(page, "run-name").fill("ui-second")
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


def field(page, elem: str):
    return page.locator(f"#{elem} textarea, #{elem} input").first


def refused(page, message: str, screenshot: str | None = None) -> None:
    """Start, then the one-line error shown for it (it names the field); no run is written."""
    page.locator("#start-run").click()
    toast = page.get_by_text(re.compile(re.escape(message))).first
    toast.wait_for()
    assert "\n" not in toast.inner_text().strip() and "Traceback" not in page.locator("body").inner_text()
    assert page.locator("#runs-table [role=grid]").is_visible()  # no "Error" badge hides the runs table
    if screenshot:
        page.wait_for_timeout(800)  # the toast fades in
        shot(page, screenshot, full_page=False)
    page.locator("button.toast-close").first.click()  # dismiss it before the next one


def test_the_form_is_checked_before_start_and_shows_what_a_method_reads(page, served):  # noqa: F811
    runs = served[1]
    name = field(page, "run-name").input_value()
    assert DEFAULT_NAME.match(name), name
    before = sorted(p.name for p in runs.iterdir())
    field(page, "run-lr").fill("0")
    refused(
        page, "Learning rate: train.learning_rate=0.0 must be a positive number", "workbench-align-checked"
    )
    field(page, "run-lr").fill("0.001")
    field(page, "run-steps").fill("")
    refused(page, "Steps is empty")
    field(page, "run-steps").fill("5")
    field(page, "run-lora").fill("100000")
    refused(page, "LoRA rank: model.lora_r=100000 is larger than the student's hidden size 64")
    field(page, "run-lora").fill("0")
    page.get_by_text("Models and data").click()
    field(page, "run-teacher").fill("toy:nope")
    refused(page, "DPO teacher: unknown toy model 'toy:nope'")
    field(page, "run-teacher").fill("toy:teacher")
    field(page, "run-beta").fill("0")
    refused(page, "β: advantage scale=0: give a value at least 1e-06")  # Gradio's range check, named
    field(page, "run-beta").fill("1")
    assert sorted(p.name for p in runs.iterdir()) == before  # nothing was started or written
    only_the_settings_a_method_reads(page, runs)
    a_failed_run_shows_one_line_and_links_its_log(page, runs)


def showing(page, visible: list[str], hidden: list[str]) -> None:
    """Waits until exactly `visible` of the fields `visible` + `hidden` are shown."""
    page.wait_for_function(
        """([visible, hidden]) => {
          const shown = (id) => document.getElementById(id)?.offsetParent != null;
          return visible.every(shown) && !hidden.some(shown); }""",
        arg=[visible, hidden],
    )


def only_the_settings_a_method_reads(page, runs) -> None:
    """Each method shows the fields it reads; ADPA+ picks the newest DCKD run; names stay fresh."""
    showing(page, ["run-gamma", "run-beta", "run-teacher"], ["run-alpha", "run-dckd"])
    for label, visible, hidden in (
        (
            "SFT: imitate the chosen replies",
            ["run-student"],
            ["run-alpha", "run-gamma", "run-beta", "run-teacher"],
        ),
        (
            "DCKD: KL on the chosen and the rejected reply",
            ["run-alpha", "run-teacher"],
            ["run-gamma", "run-beta"],
        ),
        ("DPO: the student's own DPO", ["run-beta"], ["run-alpha", "run-gamma", "run-teacher"]),
    ):
        page.locator("#run-method input").click()
        page.get_by_role("option", name=label).click()
        showing(page, visible, hidden)
    assert "β_dpo" in page.locator("#run-beta").inner_text()
    # ADPA+ starts from the newest finished DCKD run, picked already
    fake_run(runs, "dckd-old", method="dckd")
    fake_run(runs, "dckd-new", method="dckd")
    page.locator("#run-method input").click()
    page.get_by_role("option", name="ADPA+: ADPA from a finished DCKD run").click()
    page.wait_for_function("() => document.querySelector('#run-dckd input')?.value === 'dckd-new'")
    # a default name is never one that is taken: taken while the page was open, then reloaded
    taken = field(page, "run-name").input_value()
    assert taken.startswith("adpa-plus-")
    (runs / taken).mkdir()
    page.reload()
    page.get_by_role("tab", name="Align").click()
    page.wait_for_function("() => document.querySelector('#run-name textarea, #run-name input')?.value")
    fresh = field(page, "run-name").input_value()
    assert DEFAULT_NAME.match(fresh) and fresh != taken and not (runs / fresh).exists()


def a_failed_run_shows_one_line_and_links_its_log(page, runs) -> None:
    fake_run(runs, "broken-run", error="KeyError: 3", log=TRACEBACK + "error: KeyError: 3\n")
    page.get_by_role("button", name="Refresh list").click()
    page.locator("#runs-table [role=gridcell]", has_text="broken-run").first.click()
    page.wait_for_selector("#run-progress[data-state='failed']")
    text = page.locator("#run-progress").inner_text()
    assert "KeyError: 3" in text and "Traceback" not in text and text.count("KeyError") == 1
    link = page.locator("#run-log a[href]").first
    link.wait_for()
    with urllib.request.urlopen(link.get_attribute("href")) as response:  # the link serves the whole log
        assert "Traceback (most recent call last)" in response.read().decode()
