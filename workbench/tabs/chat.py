"""The Chat tab: one prompt to the student before and after alignment (and the teacher), side by side."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from .. import run_views, views
from ..handlers import TOY, TOY_PROMPTS, Handlers
from . import after_error, guard, named_range


def chat_panel(title: str, elem: str, visible: bool = True) -> SimpleNamespace:
    """One reply column: heading, streamed text, reward, and a button to open it in the Advantages tab."""
    with gr.Column(visible=visible) as column:
        heading = gr.Markdown(f"### {title}")
        text = gr.Textbox(label="reply", lines=5, interactive=False, elem_id=f"chat-{elem}")
        score = gr.Markdown(elem_id=f"chat-{elem}-score")
        open_ = gr.Button("Open in Advantages", size="sm", elem_id=f"chat-{elem}-open")
        student = gr.State(TOY["student"])  # the student to inspect the reply with
    return SimpleNamespace(
        column=column, heading=heading, text=text, score=score, open=open_, student=student
    )


def chat_tab(h: Handlers, adv: SimpleNamespace, tabs: gr.Tabs) -> SimpleNamespace:
    with gr.Tab("Chat", id="chat") as tab:
        with gr.Row():
            prompt = gr.Textbox(
                label="Prompt (Enter compares, Shift+Enter: new line)",
                lines=1,
                max_lines=6,
                scale=4,
                elem_id="chat-prompt",
            )
            sample = gr.Button("Sample a prompt", scale=1)
        with gr.Row():
            run = gr.Dropdown(
                [], label="Aligned run (finished)", elem_id="chat-run", scale=2, allow_custom_value=True
            )
            teacher_too = gr.Checkbox(True, label="Also ask the teacher", scale=1)
            reward = gr.Textbox(
                "toy",
                label="Reward: toy, real (the judge), or a reward model",
                scale=2,
                elem_id="chat-reward",
            )
            max_new = named_range(gr.Slider(8, 256, value=48, step=8, label="max new tokens", scale=2))
        compare = gr.Button("Compare", variant="primary", elem_id="chat-compare")
        note = gr.Markdown(elem_id="chat-note")  # one message for what all panels share (the reward)
        with gr.Row(equal_height=True):
            before = chat_panel("Student before alignment", "before")
            after = chat_panel("Student after alignment", "after")
            teacher = chat_panel("Teacher", "teacher")

    def talk(model: str, heading: str, student: str, p: str, n: float, spec: str):
        head = f"### {heading}\n{views.code(model)}"
        for part in h.chat(p, model, int(n), spec):
            yield head, part["text"], run_views.score_markdown(part), student

    def ask_before(p: str, r: str | None, n: float, spec: str):
        student = h.before_model(r, spec)
        yield from talk(student, "Student before alignment", student, p, n, spec)

    def ask_after(p: str, r: str | None, n: float, spec: str):
        if not r:
            yield (
                "### Student after alignment",
                "",
                "*Pick a finished run above (train one in the Align tab).*",
                TOY["student"],
            )
            return
        yield from talk(r, f"Student after alignment ({r})", r, p, n, spec)

    def ask_teacher(p: str, t: str, on: bool, n: float, spec: str, r: str | None):
        if on:
            yield from talk(t, "Teacher", h.before_model(r, spec), p, n, spec)

    def reward_note(spec: str) -> str:
        why = h.check_reward(spec)
        return f"<span style='color:#d62728'>{views.esc(why)}</span>" if why else ""

    outputs = lambda panel: [panel.heading, panel.text, panel.score, panel.student]
    common = [prompt, run, max_new, reward]
    asks = (
        (before, ask_before, common, "chat_student"),
        (after, ask_after, common, "chat_aligned"),
        (teacher, ask_teacher, [prompt, adv.teacher, teacher_too, max_new, reward, run], "chat_teacher"),
    )
    for trigger, public in ((compare.click, True), (prompt.submit, False)):
        trigger(reward_note, reward, note, api_visibility="private", show_progress="hidden")
        for panel, ask, inputs, name in asks:
            api = {"api_name": name} if public else {"api_visibility": "private"}
            asked = trigger(guard(ask), inputs, outputs(panel), **api)
            # after an error the panel shows no reply of an earlier prompt (its heading stays)
            after_error(asked, outputs(panel), lambda: (gr.update(), "", "", gr.update()))
    sample.click(
        guard(lambda d: h.sample_prompt(d or TOY_PROMPTS, "test")["prompt"]),
        adv.dataset,
        prompt,
        api_visibility="private",
    )
    teacher_too.change(
        lambda on: gr.update(visible=on), teacher_too, teacher.column, api_visibility="private"
    )
    tab.select(lambda: gr.update(choices=h.run_names(finished=True)), None, run, api_visibility="private")
    for panel in (before, after, teacher):
        panel.open.click(
            lambda p, text, student: (p, text, student, gr.Tabs(selected="advantages")),
            [prompt, panel.text, panel.student],
            [adv.prompt, adv.response, adv.student, tabs],
            api_visibility="private",
        ).then(adv.compute_fn, adv.inputs, adv.outputs, api_visibility="private")
    return SimpleNamespace(run=run, prompt=prompt, reward=reward)
