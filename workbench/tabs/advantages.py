"""The Advantages tab: a reply as a heatmap of the teacher's per-token advantages, its alternatives, and
the student's expected advantage per position."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import gradio as gr

from .. import figures, run_views, views
from ..handlers import TOY, TOY_PROMPTS, Handlers
from . import after_error, guard, named_range

# Clicking a token chip (or Enter / Space on a focused one) selects its position; focusing one shows its
# numbers under the heatmap (tooltips need a mouse). Listeners sit on the component's element, which stays
# while the heatmap inside it is redrawn.
HEATMAP_JS = """
const chip = (e) => e.target.closest && e.target.closest('.adv-token');
const pick = (c) => trigger('click', {pos: +c.dataset.pos});
element.addEventListener('click', (e) => { const c = chip(e); if (c) pick(c); });
element.addEventListener('keydown', (e) => {
  const c = chip(e);
  if (c && (e.key === 'Enter' || e.key === ' ')) { e.preventDefault(); pick(c); }
});
const detail = (e) => {
  const c = chip(e), box = element.querySelector('#adv-token-detail');
  if (c && box) box.textContent = c.getAttribute('aria-label');
};
element.addEventListener('focusin', detail);
element.addEventListener('mouseover', detail);
"""


def advantages_tab(h: Handlers) -> SimpleNamespace:
    with gr.Tab("Advantages", id="advantages"):
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(
                    label="Prompt (Enter computes, Shift+Enter: new line)",
                    lines=1,
                    max_lines=6,
                    elem_id="adv-prompt",
                )
                with gr.Row():
                    dataset = gr.Textbox(TOY_PROMPTS, label="Dataset (toy:, real:, hub id or file)", scale=2)
                    split = gr.Dropdown(
                        ["test", "validation", "train"],
                        value="test",
                        label="Split",
                        scale=1,
                        allow_custom_value=True,
                    )
                    sample = gr.Button("Sample a prompt", scale=1)
                response = gr.Textbox(label="Response", lines=3, elem_id="adv-response")
                with gr.Row():
                    writer = gr.Radio(["student", "teacher"], value="student", label="Generate it with")
                    max_new = named_range(gr.Slider(8, 256, value=48, step=8, label="max new tokens"))
                    generate = gr.Button("Generate a response")
            with gr.Column(scale=2):
                teacher = gr.Textbox(
                    TOY["teacher"], label="DPO teacher (toy:/real: name, run, hub id or path)"
                )
                teacher_ref = gr.Textbox(TOY["teacher_ref"], label="Reference teacher (empty: none)")
                student = gr.Textbox(TOY["student"], label="Student (empty: none)", elem_id="adv-student")
                with gr.Row():
                    beta = named_range(gr.Number(1.0, label="β", minimum=1e-6, elem_id="adv-beta"))
                    k = named_range(gr.Slider(2, 20, value=8, step=1, label="alternatives shown (top-k)"))
                with gr.Row():
                    support = gr.Radio(
                        [("full vocabulary", "full"), ("the DPO teacher's top-k", "topk")],
                        value="full",
                        label="expected advantage over",
                        scale=2,
                    )
                    support_k = named_range(
                        gr.Number(20, label="k of that top-k", precision=0, minimum=1, visible=False, scale=1)
                    )
                scale = gr.Dropdown(
                    list(views.SCALES),
                    value=views.DEFAULT_SCALE,
                    label="colour scale: |A| at full colour (the same for every reply)",
                    elem_id="adv-scale",
                )
        compute = gr.Button("Compute advantages", variant="primary", elem_id="compute-advantages")
        summary = gr.Markdown(elem_id="adv-summary")
        heatmap = gr.HTML(elem_id="adv-heatmap-box", js_on_load=HEATMAP_JS)
        with gr.Row():
            reward = gr.Textbox("toy", label="Reward: toy, real (the judge), or a reward model", scale=2)
            with gr.Column(scale=3):
                score = gr.Button(
                    "Score this response (the true reward, next to the implicit one)", size="md"
                )
                score_out = gr.Markdown(elem_id="adv-score")
        alt_plot = gr.Plot(figures.alternatives_figure({}), elem_id="adv-alternatives", show_label=False)
        with gr.Row():
            with gr.Column(scale=2):
                position = gr.Slider(
                    0, 1, value=0, step=1, label="Position to inspect", elem_id="adv-position"
                )
                alt_title = gr.Markdown(elem_id="adv-alt-title")
                alt_table = gr.Dataframe(interactive=False, elem_id="adv-alternatives-table")
            with gr.Column(scale=3):
                expected_plot = gr.Plot(figures.expected_figure({}), elem_id="adv-expected", show_label=False)
        table = gr.Dataframe(
            label="Per token (click a row, or a token above, to inspect its position)",
            interactive=False,
            elem_id="adv-token-table",
        )
        # The report stays on the server (gr.State): as a browser-side JSON value, a long reply's report
        # (1.5 MB for 1,000 tokens) took the page seconds to take in and to send back on every click.
        report = gr.State(None)
        centre = gr.State(None)  # the position a long reply's alternatives map is centred on (None: worst)
        with gr.Accordion("Report as JSON (loaded when opened)", open=False) as raw:
            report_json = gr.JSON(label="report", elem_id="adv-report-json")
        api_only = gr.Button(visible=False)  # the /advantages and /alternatives APIs (see below)

    def run(p: str, r: str, t: str, tr: str, s: str, b: Any, kk: float, sup: str, sk: Any, sc: Any) -> tuple:
        data = h.advantages(p, r, t, tr, s, b, int(kk), sup, sk)
        sc = float(sc or views.DEFAULT_SCALE)  # a display setting: API calls may leave it out
        worst = min(range(len(data["advantage"])), key=data["advantage"].__getitem__)
        title, alts = views.alternatives_view(data, worst)
        return (
            data,
            views.summary_markdown(data, sc),
            views.heatmap_html(data, sc),
            figures.alternatives_figure(data, sc),
            figures.expected_figure(data),
            views.token_table(data),
            gr.update(maximum=max(1, len(data["tokens"]) - 1), value=worst),
            title,
            alts,
        )

    def cleared() -> tuple:
        """What `run` shows after a failed compute: nothing of the previous reply."""
        title, alts = views.alternatives_view({}, 0)
        return (
            None,
            "",
            views.heatmap_html({}),
            figures.alternatives_figure({}),
            figures.expected_figure({}),
            views.token_table({}),
            gr.update(maximum=1, value=0),
            title,
            alts,
        )

    def rescale(data: dict[str, Any] | None, sc: Any, at: int | None) -> tuple:
        data, sc = data or {}, float(sc or views.DEFAULT_SCALE)
        shown = views.summary_markdown(data, sc), views.heatmap_html(data, sc)
        return (*shown, figures.alternatives_figure(data, sc, at))

    def write(prompt_: str, who: str, student_: str, teacher_: str, n: float):
        yield from h.generate_response(prompt_, student_ if who == "student" else teacher_, int(n))

    def pick(evt: gr.SelectData) -> int:
        return int(evt.index[0]) if isinstance(evt.index, list | tuple) else int(evt.index)

    def pick_token(evt: gr.EventData) -> int:
        return int(evt.pos)

    def scored(p: str, r: str, spec: str, t: str | None = None) -> str:
        score = h.score_response(p, r, spec, model=t)
        return run_views.score_markdown({"done": True, "stopped": True, "score": score})

    def shown(*args: Any) -> tuple:
        return (*run(*args), None, None)  # the JSON view empties (it loads when opened); map on the worst

    compute_fn = guard(shown)
    inputs = [prompt, response, teacher, teacher_ref, student, beta, k, support, support_k, scale]
    views_out = [summary, heatmap, alt_plot, expected_plot, table, position, alt_title, alt_table]
    outputs = [report, *views_out, report_json, centre]
    # one progress animation (on the heatmap): one per output kept the page busy for seconds
    busy = {"api_visibility": "private", "show_progress_on": heatmap}
    for computed in (
        compute.click(compute_fn, inputs, outputs, **busy),
        prompt.submit(compute_fn, inputs, outputs, **busy),
    ):
        after_error(computed, outputs, lambda: (*cleared(), None, None))
    raw.expand(lambda data: data, report, report_json, api_visibility="private")
    # The API: the same computation with the report as JSON (its first output), and the alternatives of
    # a position of a report sent back; an API call has its own session and redraws no page.
    api_only.click(guard(run), inputs, [report_json, *views_out], api_name="advantages")
    api_only.click(
        guard(views.alternatives_view),
        [report_json, position],
        [alt_title, alt_table],
        api_name="alternatives",
    )
    scale.change(rescale, [report, scale, centre], [summary, heatmap, alt_plot], api_visibility="private")
    support.change(lambda s: gr.update(visible=s == "topk"), support, support_k, api_visibility="private")
    sampled = sample.click(
        guard(lambda d, s: h.sample_prompt(d, s)["prompt"]),
        [dataset, split],
        prompt,
        api_name="sample_prompt",
    )
    after_error(sampled, [prompt])
    written = generate.click(
        guard(write), [prompt, writer, student, teacher, max_new], response, api_name="generate_response"
    )
    after_error(written, [response])

    def inspect(data: dict[str, Any] | None, t: Any, sc: Any, at: int | None) -> tuple:
        """A position's alternatives; a long reply's map moves when the position is outside it."""
        data, t = data or {}, int(t or 0)
        title, alts = views.alternatives_view(data, t)
        if not data or t in figures.shown_positions(data, at):
            return title, alts, gr.update(), at
        return title, alts, figures.alternatives_figure(data, sc or views.DEFAULT_SCALE, t), t

    position.change(
        guard(inspect),
        [report, position, scale, centre],
        [alt_title, alt_table, alt_plot, centre],
        api_visibility="private",
    )
    table.select(pick, None, position, api_visibility="private")
    heatmap.click(pick_token, None, position, api_visibility="private")
    scoring = score.click(
        guard(scored), [prompt, response, reward, teacher], score_out, api_name="score_response"
    )
    after_error(scoring, [score_out], lambda: "")
    return SimpleNamespace(
        prompt=prompt,
        response=response,
        student=student,
        teacher=teacher,
        teacher_ref=teacher_ref,
        dataset=dataset,
        reward=reward,
        scale=scale,
        compute_fn=compute_fn,
        inputs=inputs,
        outputs=outputs,
    )
