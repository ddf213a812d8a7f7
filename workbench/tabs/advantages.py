"""The Advantages tab: a reply as a heatmap of the teacher's per-token advantages, its alternatives, and
the student's expected advantage per position."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from .. import run_views, views
from ..handlers import TOY, TOY_PROMPTS, Handlers
from . import guard


def advantages_tab(h: Handlers) -> SimpleNamespace:
    with gr.Tab("Advantages", id="advantages"):
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="adv-prompt")
                with gr.Row():
                    dataset = gr.Textbox(TOY_PROMPTS, label="Dataset (toy:, hub id or file)", scale=2)
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
                    max_new = gr.Slider(8, 256, value=48, step=8, label="max new tokens")
                    generate = gr.Button("Generate a response")
            with gr.Column(scale=2):
                teacher = gr.Textbox(TOY["teacher"], label="DPO teacher (toy: name, run, hub id or path)")
                teacher_ref = gr.Textbox(TOY["teacher_ref"], label="Reference teacher (empty: none)")
                student = gr.Textbox(TOY["student"], label="Student (empty: none)", elem_id="adv-student")
                with gr.Row():
                    beta = gr.Number(1.0, label="β", minimum=1e-6)
                    k = gr.Slider(2, 20, value=8, step=1, label="alternatives shown (top-k)")
                support = gr.Radio(["full", "topk"], value="full", label="expected advantage over")
        compute = gr.Button("Compute advantages", variant="primary", elem_id="compute-advantages")
        summary = gr.Markdown(elem_id="adv-summary")
        heatmap = gr.HTML(elem_id="adv-heatmap-box")
        with gr.Row():
            reward = gr.Textbox("toy", label="Reward: toy, or a reward model", scale=2)
            with gr.Column(scale=3):
                score = gr.Button(
                    "Score this response (the true reward, next to the implicit one)", size="md"
                )
                score_out = gr.Markdown(elem_id="adv-score")
        alt_plot = gr.Plot(views.alternatives_figure({}), elem_id="adv-alternatives", show_label=False)
        with gr.Row():
            with gr.Column(scale=2):
                position = gr.Slider(0, 1, value=0, step=1, label="Position to inspect")
                alt_title = gr.Markdown()
                alt_table = gr.Dataframe(interactive=False, elem_id="adv-alternatives-table")
            with gr.Column(scale=3):
                expected_plot = gr.Plot(views.expected_figure({}), elem_id="adv-expected", show_label=False)
        table = gr.Dataframe(
            label="Per token (click a row to inspect its position)",
            interactive=False,
            elem_id="adv-token-table",
        )
        with gr.Accordion("Report as JSON", open=False):
            report = gr.JSON(label="report")

    def run(p: str, r: str, t: str, tr: str, s: str, b: float, kk: float, sup: str) -> tuple:
        data = h.advantages(p, r, t, tr, s, float(b or 1.0), int(kk), sup)
        worst = min(range(len(data["advantage"])), key=data["advantage"].__getitem__)
        title, alts = views.alternatives_view(data, worst)
        return (
            data,
            views.summary_markdown(data),
            views.heatmap_html(data),
            views.alternatives_figure(data),
            views.expected_figure(data),
            views.token_table(data),
            gr.update(maximum=max(1, len(data["tokens"]) - 1), value=worst),
            title,
            alts,
        )

    def write(prompt_: str, who: str, student_: str, teacher_: str, n: float):
        yield from h.generate_response(prompt_, student_ if who == "student" else teacher_, int(n))

    def pick(evt: gr.SelectData) -> int:
        return int(evt.index[0]) if isinstance(evt.index, list | tuple) else int(evt.index)

    def scored(p: str, r: str, spec: str) -> str:
        score = h.score_response(p, r, spec)
        return run_views.score_markdown({"done": True, "stopped": True, "score": score})

    compute_fn = guard(run)
    inputs = [prompt, response, teacher, teacher_ref, student, beta, k, support]
    outputs = [report, summary, heatmap, alt_plot, expected_plot, table, position, alt_title, alt_table]
    compute.click(compute_fn, inputs, outputs, api_name="advantages")
    sample.click(
        guard(lambda d, s: h.sample_prompt(d, s)["prompt"]),
        [dataset, split],
        prompt,
        api_name="sample_prompt",
    )
    generate.click(
        guard(write), [prompt, writer, student, teacher, max_new], response, api_name="generate_response"
    )
    position.change(
        guard(views.alternatives_view), [report, position], [alt_title, alt_table], api_name="alternatives"
    )
    table.select(pick, None, position, api_visibility="private")
    score.click(guard(scored), [prompt, response, reward], score_out, api_name="score_response")
    return SimpleNamespace(
        prompt=prompt,
        response=response,
        student=student,
        teacher=teacher,
        compute_fn=compute_fn,
        inputs=inputs,
        outputs=outputs,
    )
