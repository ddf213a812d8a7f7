"""The Align tab: start a run (`adpa train` subprocess), watch its progress and loss curves, cancel it.

Start validates the whole form first (run_form: the config as `adpa train` builds it, the models, the
LoRA rank), so a run that cannot train is refused with one line naming the field; only settings the
chosen method reads are shown.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import gradio as gr

from adpa_core.config import METHODS

from .. import run_views, views
from ..handlers import TOY, Handlers
from ..locations import WorkbenchError
from ..run_form import LABELS, method_defaults, used
from ..worlds import model_world
from . import after_error, guard, named_range

METHOD_LABELS = {
    "sft": "SFT: imitate the chosen replies",
    "dpo": "DPO: the student's own DPO",
    "kd": "KD: SFT + KL to the DPO teacher",
    "dckd": "DCKD: KL on the chosen and the rejected reply",
    "adpa": "ADPA: raise the student's expected advantage",
    "adpa_plus": "ADPA+: ADPA from a finished DCKD run",
}
TICK_S = 1.5  # seconds between two reads of the shown run's status and metrics
SETTINGS = (  # the form's fields, in the order of the start_run API's inputs
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
SHOWN = ("alpha", "gamma", "beta", "dckd_run", "student", "teacher", "teacher_ref")  # hidden when unused


def beta_label(method: str) -> str:
    return "β_dpo: DPO temperature" if method == "dpo" else f"{LABELS['beta']}: advantage scale"


def align_tab(h: Handlers) -> SimpleNamespace:
    d = method_defaults("adpa")
    with gr.Tab("Align", id="align") as tab:
        with gr.Row():
            with gr.Column(scale=2):
                method = gr.Dropdown(
                    [(METHOD_LABELS[m], m) for m in METHODS],
                    value="adpa",
                    label="Method",
                    elem_id="run-method",
                )
                name = gr.Textbox(label="Run name (letters, digits, - _ .)", elem_id="run-name")
                with gr.Row():
                    steps = gr.Number(
                        d["steps"], label=LABELS["steps"], precision=0, minimum=1, elem_id="run-steps"
                    )
                    lr = gr.Number(
                        d["learning_rate"], label=LABELS["learning_rate"], minimum=0, elem_id="run-lr"
                    )
                    lora = gr.Number(
                        0,
                        label=f"{LABELS['lora_rank']} (0: all weights)",
                        precision=0,
                        minimum=0,
                        elem_id="run-lora",
                    )
                with gr.Row():
                    alpha = gr.Number(
                        d["alpha"], label=LABELS["alpha"], minimum=0, visible=False, elem_id="run-alpha"
                    )
                    gamma = gr.Number(d["gamma"], label=LABELS["gamma"], minimum=0, elem_id="run-gamma")
                    beta = gr.Number(d["beta"], label=beta_label("adpa"), minimum=1e-6, elem_id="run-beta")
                dckd_run = gr.Dropdown(
                    [],
                    label=f"{LABELS['dckd_run']} (a finished DCKD run)",
                    visible=False,
                    allow_custom_value=True,
                    elem_id="run-dckd",
                )
                with gr.Accordion("Models and data", open=False):
                    student = gr.Textbox(TOY["student"], label=LABELS["student"], elem_id="run-student")
                    teacher = gr.Textbox(TOY["teacher"], label=LABELS["teacher"], elem_id="run-teacher")
                    teacher_ref = gr.Textbox(TOY["teacher_ref"], label=LABELS["teacher_ref"])
                    data = gr.Textbox("toy:preferences", label=LABELS["data"])
                    max_examples = gr.Number(
                        0, label=f"{LABELS['max_examples']} (0: all)", precision=0, minimum=0
                    )
                with gr.Row():
                    start = gr.Button("Start run", variant="primary", elem_id="start-run")
                    cancel = gr.Button("Cancel run", variant="stop", elem_id="cancel-run")
                    refresh = gr.Button("Refresh list")
                message = gr.Markdown(elem_id="run-message")
            with gr.Column(scale=3):
                watch = gr.Dropdown([], label="Run shown", elem_id="run-shown", allow_custom_value=True)
                progress = gr.HTML(run_views.progress_html(None), elem_id="run-progress-box")
                log = gr.File(label="Full log of the shown run (train.log)", visible=False, elem_id="run-log")
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
    for box in (steps, lr, lora, alpha, gamma, beta, max_examples):
        named_range(box)
    shown = dict(zip(SHOWN, (alpha, gamma, beta, dckd_run, student, teacher, teacher_ref), strict=True))

    def choose(m: str, student_: str | None = None):
        """A method's defaults (in the student's world), its fields shown (the others hidden), a fresh
        name, the newest DCKD run."""
        dm = method_defaults(m, model_world(student_ or "") or "toy")
        dckd = h.run_names("dckd", finished=True)
        visible = {key: gr.update(visible=used(key, m)) for key in SHOWN}
        visible["dckd_run"] = gr.update(
            visible=used("dckd_run", m), choices=dckd, value=dckd[0] if dckd else None
        )
        visible["beta"] = gr.update(visible=used("beta", m), label=beta_label(m), value=dm["beta"])
        visible["alpha"] = gr.update(visible=used("alpha", m), value=dm["alpha"])
        visible["gamma"] = gr.update(visible=used("gamma", m), value=dm["gamma"])
        return (h.fresh_run_name(m), dm["steps"], dm["learning_rate"], *visible.values())

    def begin(*values: Any):
        out = h.start_run(dict(zip(SETTINGS, values, strict=True)))
        rows = h.list_runs()
        return (
            f"Started **{views.esc(out['name'])}**.",
            gr.update(choices=[r["name"] for r in rows], value=out["name"]),
            run_views.runs_table(rows),
            h.fresh_run_name(values[0]),  # the next Start needs a new name
        )

    def stop(run: str):
        return views.esc(h.cancel_run(run)["message"])

    def tick(run: str | None, last: Any):
        try:
            s = h.run_status(run) if run else None
        except WorkbenchError:  # e.g. its folder was removed while the page was open
            s = None
        if s is None:
            return (
                run_views.progress_html(None),
                gr.update(),
                None,
                gr.update(),
                None,
                gr.update(visible=False),
            )
        sig = [run, s["display"], s.get("step"), len(s["metrics"]), s.get("phase_done")]
        if sig == last:  # nothing new on disk: only the ETA in the progress bar moves
            return run_views.progress_html(s), gr.update(), last, gr.update(), gr.update(), gr.update()
        # gradio_client would take a dict with a "path" key for a file to download: name it run_dir; the
        # traceback of a failed run stays in its log (offered for download), never on the page
        plain = {k: v for k, v in s.items() if k not in ("metrics", "path", "traceback")}
        plain |= {"run_dir": s["path"], "metrics_rows": len(s["metrics"])}
        failed = s["display"] in ("failed", "crashed")
        log_file = h.run_log(run) if failed else None
        return (
            run_views.progress_html(s),
            run_views.loss_figure(s["metrics"], run),
            sig,
            run_views.runs_table(h.list_runs()),
            plain,
            gr.update(value=log_file, visible=log_file is not None),
        )

    def show_clicked(evt: gr.SelectData):
        return evt.row_value[0] if evt.row_value else gr.update()

    def renamed(current: str, m: str):
        """On showing the tab: a fresh name when the one in the box is taken (e.g. by the last Start)."""
        taken = bool((current or "").strip()) and (h.loc.runs_dir / current.strip()).exists()
        return h.fresh_run_name(m) if taken or not (current or "").strip() else gr.update()

    settings = [method, name, steps, lr, lora, alpha, gamma, beta, dckd_run, student, teacher, teacher_ref]
    settings += [data, max_examples]
    method.change(
        choose,
        [method, student],
        [name, steps, lr, *shown.values()],
        api_visibility="private",
        show_progress="hidden",
    )
    listed = lambda: run_views.runs_table(h.list_runs())  # noqa: E731
    started = start.click(guard(begin), settings, [message, watch, runs, name], api_name="start_run")
    after_error(started, [message, watch, runs, name], lambda: ("", gr.update(), listed(), gr.update()))
    after_error(cancel.click(guard(stop), watch, message, api_name="cancel_run"), [message], lambda: "")
    refresh.click(guard(listed), None, runs, api_name="list_runs")
    status_out = [progress, curve, seen, runs, status_json, log]
    watch.change(guard(lambda run: tick(run, None)), watch, status_out, api_name="run_status")
    timer.tick(guard(tick), [watch, seen], status_out, api_visibility="private", show_progress="hidden")
    runs.select(show_clicked, None, watch, api_visibility="private")
    tab.select(renamed, [name, method], name, api_visibility="private", show_progress="hidden")
    return SimpleNamespace(
        watch=watch,
        runs=runs,
        dckd_run=dckd_run,
        name=name,
        method=method,
        steps=steps,
        lr=lr,
        lora=lora,
        student=student,
        teacher=teacher,
        teacher_ref=teacher_ref,
        data=data,
    )
