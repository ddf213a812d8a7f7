"""The Align tab: start a run (`adpa train` subprocess), watch its progress and loss curves, cancel it."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import gradio as gr

from adpa_core.config import METHODS

from .. import run_views, views
from ..handlers import TOY, Handlers
from ..jobs import method_defaults
from ..locations import WorkbenchError
from . import guard

METHOD_LABELS = {
    "sft": "SFT: imitate the chosen replies",
    "dpo": "DPO: the student's own DPO",
    "kd": "KD: SFT + KL to the DPO teacher",
    "dckd": "DCKD: KL on the chosen and the rejected reply",
    "adpa": "ADPA: raise the student's expected advantage",
    "adpa_plus": "ADPA+: ADPA from a finished DCKD run",
}
TICK_S = 1.5  # seconds between two reads of the shown run's status and metrics


def default_run_name(method: str) -> str:
    return f"{method.replace('_', '-')}-{time.strftime('%m%d-%H%M%S')}"


def align_tab(h: Handlers) -> SimpleNamespace:
    d = method_defaults("adpa")
    with gr.Tab("Align", id="align"):
        with gr.Row():
            with gr.Column(scale=2):
                method = gr.Dropdown([(METHOD_LABELS[m], m) for m in METHODS], value="adpa", label="Method")
                name = gr.Textbox(
                    default_run_name("adpa"), label="Run name (letters, digits, - _ .)", elem_id="run-name"
                )
                with gr.Row():
                    steps = gr.Number(d["steps"], label="Steps", precision=0, minimum=1, elem_id="run-steps")
                    lr = gr.Number(d["learning_rate"], label="Learning rate", minimum=0)
                    lora = gr.Number(0, label="LoRA rank (0: all weights)", precision=0, minimum=0)
                with gr.Row():
                    alpha = gr.Number(d["alpha"], label="α: KL weights (KD, DCKD)", minimum=0)
                    gamma = gr.Number(d["gamma"], label="γ: ADPA weight", minimum=0)
                    beta = gr.Number(d["beta"], label="β: advantage scale (DPO: β_dpo)", minimum=1e-6)
                dckd_run = gr.Dropdown(
                    [],
                    label="ADPA+ starts from this finished DCKD run",
                    visible=False,
                    allow_custom_value=True,
                )
                with gr.Accordion("Models and data", open=False):
                    student = gr.Textbox(TOY["student"], label="Student")
                    teacher = gr.Textbox(TOY["teacher"], label="DPO teacher (KD, DCKD, ADPA)")
                    teacher_ref = gr.Textbox(TOY["teacher_ref"], label="Reference teacher (ADPA)")
                    data = gr.Textbox("toy:preferences", label="Preference data")
                    max_examples = gr.Number(
                        0, label="Use the first N examples (0: all)", precision=0, minimum=0
                    )
                with gr.Row():
                    start = gr.Button("Start run", variant="primary", elem_id="start-run")
                    cancel = gr.Button("Cancel run", variant="stop", elem_id="cancel-run")
                    refresh = gr.Button("Refresh list")
                message = gr.Markdown(elem_id="run-message")
            with gr.Column(scale=3):
                watch = gr.Dropdown([], label="Run shown", elem_id="run-shown", allow_custom_value=True)
                progress = gr.HTML(run_views.progress_html(None), elem_id="run-progress-box")
                curve = gr.Plot(run_views.loss_figure([], ""), elem_id="run-curve", show_label=False)
        runs = gr.Dataframe(
            run_views.runs_table([]),
            label="Runs (read from disk; click one to show it)",
            interactive=False,
            elem_id="runs-table",
        )
        with gr.Accordion("Status of the shown run (JSON)", open=False):
            status_json = gr.JSON(label="status")
        seen = gr.State(None)  # what the curve last showed, so an unchanged run is not redrawn
        timer = gr.Timer(TICK_S)

    def choose(m: str):
        dm = method_defaults(m)
        return (
            default_run_name(m),
            dm["steps"],
            dm["learning_rate"],
            dm["alpha"],
            dm["gamma"],
            dm["beta"],
            gr.update(visible=m == "adpa_plus", choices=h.run_names("dckd", finished=True)),
        )

    def begin(*values: Any):
        keys = (
            "method",
            "name",
            "steps",
            "learning_rate",
            "lora_rank",
            "alpha",
            "gamma",
            "beta",
            "dckd_run",
            "student",
            "teacher",
            "teacher_ref",
            "data",
            "max_examples",
        )
        out = h.start_run(dict(zip(keys, values, strict=True)))
        rows = h.list_runs()
        return (
            f"Started **{views.esc(out['name'])}**.",
            gr.update(choices=[r["name"] for r in rows], value=out["name"]),
            run_views.runs_table(rows),
        )

    def stop(run: str):
        return views.esc(h.cancel_run(run)["message"])

    def tick(run: str | None, last: Any):
        try:
            s = h.run_status(run) if run else None
        except WorkbenchError:  # e.g. its folder was removed while the page was open
            s = None
        if s is None:
            return run_views.progress_html(None), gr.update(), None, gr.update(), None
        sig = [run, s["display"], s.get("step"), len(s["metrics"])]
        if sig == last:  # nothing new on disk: only the ETA in the progress bar moves
            return run_views.progress_html(s), gr.update(), last, gr.update(), gr.update()
        # gradio_client would take a dict with a "path" key for a file to download: name it run_dir
        plain = {k: v for k, v in s.items() if k not in ("metrics", "path")}
        plain |= {"run_dir": s["path"], "metrics_rows": len(s["metrics"])}
        return (
            run_views.progress_html(s),
            run_views.loss_figure(s["metrics"], run),
            sig,
            run_views.runs_table(h.list_runs()),
            plain,
        )

    def show_clicked(evt: gr.SelectData):
        return evt.row_value[0] if evt.row_value else gr.update()

    settings = [
        method,
        name,
        steps,
        lr,
        lora,
        alpha,
        gamma,
        beta,
        dckd_run,
        student,
        teacher,
        teacher_ref,
        data,
        max_examples,
    ]
    method.change(choose, method, [name, steps, lr, alpha, gamma, beta, dckd_run], api_visibility="private")
    start.click(guard(begin), settings, [message, watch, runs], api_name="start_run")
    cancel.click(guard(stop), watch, message, api_name="cancel_run")
    refresh.click(guard(lambda: run_views.runs_table(h.list_runs())), None, runs, api_name="list_runs")
    status_out = [progress, curve, seen, runs, status_json]
    watch.change(guard(lambda run: tick(run, None)), watch, status_out, api_name="run_status")
    timer.tick(guard(tick), [watch, seen], status_out, api_visibility="private", show_progress="hidden")
    runs.select(show_clicked, None, watch, api_visibility="private")
    return SimpleNamespace(watch=watch, runs=runs, dckd_run=dckd_run)
