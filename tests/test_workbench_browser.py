"""The workbench in a real browser (Playwright driving Debian's chromium) on the quick toy world: the
Advantages and Chat tabs (the Align tab: test_workbench_browser_align.py).

Screenshots go to test-artifacts/ (ignored by git): look at them after a change to the layout; the ones
README shows are copied to docs/screenshots.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.workbench_kit import browser, open_page, served, shot, url  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHAT_PROMPT = "hey you , what city is lea webb in ?"  # "hey" prompts draw rude replies from the SFT student
LONG_REPLY = " ".join(["lima ."] * 500)  # 1,000 tokens + the end-of-turn token
ANSWER_S = 5.0  # the longest a long reply may take, click to drawn figures (issue 17)


@pytest.fixture
def page(browser, url):  # noqa: F811
    with open_page(browser, url) as page:
        page.wait_for_selector("#adv-heatmap .adv-token")  # the example is computed on load
        yield page


def chips(page) -> int:
    return page.locator("#adv-heatmap .adv-token").count()


def compute(page, response: str, prompt: str | None = None) -> None:
    if prompt is not None:
        page.locator("#adv-prompt textarea").fill(prompt)
    page.locator("#adv-response textarea").fill(response)
    page.locator("#compute-advantages").click()


def test_heatmap_scale_tokens_keyboard_unknown_words_and_errors(page):
    page.wait_for_selector("#adv-alternatives .main-svg")
    page.wait_for_selector("#adv-expected .main-svg")
    n = chips(page)
    first = page.locator("#adv-heatmap .adv-token").first
    assert n > 5 and "A = " in first.get_attribute("aria-label") and first.get_attribute("tabindex") == "0"
    assert page.locator("#adv-token-table [role=grid]").get_attribute("aria-rowcount") == str(n + 1)
    assert "implicit reward" in page.locator("#adv-summary").inner_text()
    # the fixed, labelled scale: numbers under the bar, the range said, the plot on the same scale
    legend = page.locator("#adv-legend").inner_text()
    assert re.search(r"-2\s+-1\s+0\s+\+1\s+\+2", legend) and "fixed scale ±2" in legend
    assert "±2" in (page.locator("#adv-alternatives .cbtitle").first.text_content() or "")
    shot(page, "workbench-advantages")
    page.locator("#adv-scale input").click()
    page.get_by_role("option", name="0.5", exact=True).click()
    page.wait_for_function("() => document.querySelector('#adv-legend')?.innerText.includes('±0.5')")
    # clicking a token selects its position, as a table row does; so does Enter on a focused token
    page.locator("#adv-heatmap .adv-token").nth(3).click()
    page.wait_for_function(
        "() => document.querySelector('#adv-alt-title')?.innerText.includes('Position 3:')"
    )
    page.locator("#adv-heatmap .adv-token").nth(5).focus()
    detail = page.locator("#adv-token-detail").inner_text()
    assert detail.startswith("position 5: ") and "A = " in detail  # the numbers without hovering
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.querySelector('#adv-alt-title')?.innerText.includes('Position 5:')"
    )
    page.locator("#adv-token-table [role=row][aria-rowindex='4'] [role=gridcell]").nth(1).click()
    page.wait_for_function(
        "() => document.querySelector('#adv-alt-title')?.innerText.includes('Position 2:')"
    )
    # Enter in the prompt computes; markup in a prompt or reply is shown as text, never run
    page.locator("#adv-response textarea").fill(
        "<script>window.pwned = 1</script> <img src=x onerror=alert(1)>"
    )
    page.locator("#adv-prompt textarea").fill("<b>bold</b> which city is nia baker from ?")
    page.locator("#adv-prompt textarea").press("Enter")
    page.wait_for_function("() => document.querySelector('#adv-heatmap').innerText.includes('<b>bold</b>')")
    assert page.evaluate("() => window.pwned === undefined")
    assert page.locator("#adv-heatmap script, #adv-heatmap img, #adv-heatmap b").count() == 0
    # words outside the vocabulary: lower-cased where that helps, the rest counted; a failed compute
    # leaves nothing of the previous reply on the page
    compute(page, "Lima , Zorblax .", prompt="Which City is Nia Baker from ?")
    # the previous reply (markup) also had unknown words: wait for this reply's own count
    page.wait_for_function("() => document.querySelector('#adv-summary')?.innerText.includes('lower-cased')")
    summary = page.locator("#adv-summary").inner_text()
    assert "1 of 5 reply tokens and 0 prompt token(s) are not in the tokenizer's vocabulary" in summary
    assert "lower-cased 5 word(s)" in summary and "Which → which" in summary and "&lt;" not in summary
    assert [t.split("\n")[0] for t in page.locator("#adv-heatmap .adv-token").all_inner_texts()[:3]] == [
        "lima",
        ",",
        "<unk>",
    ]
    page.locator("#adv-student textarea, #adv-student input").first.fill("toy:nope")
    page.locator("#compute-advantages").click()
    page.get_by_text(re.compile("unknown toy model 'toy:nope'")).first.wait_for()
    page.wait_for_selector("#adv-heatmap-empty")  # the previous reply's results are gone
    assert chips(page) == 0 and page.locator("#adv-summary").inner_text().strip() == ""


def arm(page, condition: str) -> None:
    """Starts a clock in the page that stops once the JavaScript `condition` holds (read: `answered`)."""
    page.evaluate(
        """(condition) => { const holds = new Function('return ' + condition);
        window.__t0 = performance.now(); delete window.__answered;
        const id = setInterval(() => {
          if (holds()) { window.__answered = (performance.now() - window.__t0) / 1000; clearInterval(id); }
        }, 20); }""",
        condition,
    )


def answered(page) -> float:
    page.wait_for_function("() => window.__answered !== undefined")
    return page.evaluate("() => window.__answered")


HEATMAP = "document.querySelectorAll('#adv-heatmap .adv-token').length === {n}"
LONG_DRAWN = " && ".join(
    [
        HEATMAP.format(n=1001),
        "document.querySelector('#adv-alternatives .gtitle')?.textContent.includes('of 1001')",
        "document.querySelector('#adv-expected .main-svg') !== null",
        "document.querySelector('#adv-token-table [role=grid]')?.getAttribute('aria-rowcount') === '1002'",
    ]
)


def test_a_long_reply_answers_quickly_and_others_are_served_meanwhile(page, browser, url):  # noqa: F811
    with open_page(browser, url) as other:
        other.wait_for_selector("#adv-heatmap .adv-token")
        page.locator("#adv-response textarea").fill(LONG_REPLY)
        other.locator("#adv-response textarea").fill("they live in lima .")
        arm(page, LONG_DRAWN)
        page.locator("#compute-advantages").click()
        time.sleep(0.3)  # a second client asks while the long reply is computed
        arm(other, HEATMAP.format(n=6))
        other.locator("#compute-advantages").click()
        other_s, long_s = answered(other), answered(page)
    print(
        f"long reply: everything drawn after {long_s:.2f} s; the second client answered after {other_s:.2f} s"
    )
    assert long_s <= ANSWER_S and other_s <= ANSWER_S, (long_s, other_s)
    summary = page.locator("#adv-summary").inner_text()
    assert "over 1001 tokens" in summary and "longer than the models' context of 128" in summary
    shot(page, "workbench-long-reply")


def test_chat_compare_bad_reward_and_open_in_advantages(page):
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
    # a reward that does not load: the replies stay, one note says why (no error per panel)
    page.locator("#chat-reward textarea").fill("no-such-reward")
    page.locator("#chat-prompt textarea").press("Enter")  # Enter compares too
    page.wait_for_function("() => document.querySelector('#chat-note')?.innerText.includes('no-such-reward')")
    for panel in ("before", "after", "teacher"):
        page.wait_for_function(
            f"() => (document.querySelector('#chat-{panel}-score')?.innerText || '').includes('no reward')"
        )
        assert page.locator(f"#chat-{panel} textarea").input_value()
    assert page.get_by_text(re.compile("no-such-reward")).count() == 1
    page.locator("#chat-after-open").click()
    page.wait_for_function(
        "(reply) => document.querySelector('#adv-response textarea')?.value === reply", arg=reply
    )
    assert page.locator("#adv-student textarea, #adv-student input").first.input_value() == "sft-done"
    page.wait_for_function(
        "(reply) => document.querySelector('#adv-heatmap')?.innerText.includes(reply.split(' ')[0])",
        arg=reply,
    )
