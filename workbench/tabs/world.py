"""The world switch above the tabs: toy world or the real-model world (SmolLM2), each setting every model,
data and reward field of the tabs to its own; and the button that builds the real world when it is not
built yet, with its progress read back from the build's log."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import gradio as gr

from .. import views
from ..handlers import Handlers
from ..run_form import method_defaults
from ..worlds import WORLDS, real_build_status, start_real_build, world
from . import guard

BUILD_HINT = (
    "The real-model world is not built yet: press **Build the real-model world** (`adpa real build "
    "--quick`: about 4 minutes on 2 free CPU cores) or run `adpa real build` yourself."
)
POLL_S = 2.0


def world_bar() -> SimpleNamespace:
    with gr.Row(equal_height=True):
        choice = gr.Radio(
            [(w.label, w.name) for w in WORLDS.values()],
            value="toy",
            label="World",
            elem_id="world",
            scale=2,
        )
        build = gr.Button("Build the real-model world", elem_id="build-real", scale=1)
    note = gr.Markdown(WORLDS["toy"].note, elem_id="world-note")
    progress = gr.HTML(elem_id="real-build")
    timer = gr.Timer(POLL_S, active=False)
    return SimpleNamespace(world=choice, build=build, note=note, progress=progress, timer=timer)


def world_fields(adv: SimpleNamespace, align: SimpleNamespace, chat: SimpleNamespace, bar: SimpleNamespace):
    """The components a world switch sets, in the order `on_world` returns their values."""
    return [
        adv.teacher,
        adv.teacher_ref,
        adv.student,
        adv.dataset,
        adv.reward,
        adv.scale,
        adv.prompt,
        adv.response,
        align.student,
        align.teacher,
        align.teacher_ref,
        align.data,
        align.lora,
        align.steps,
        align.lr,
        chat.reward,
        chat.prompt,
        bar.note,
        bar.build,
    ]


def on_world(h: Handlers, name: str, method: str | None) -> tuple[Any, ...]:
    """Every field set to world `name`'s defaults, and its first example as the prompt and reply."""
    w = world(name)
    built = real_build_status(h.loc.home)["state"] == "built"
    example = h.example(name)
    steps = method_defaults(method or "adpa", name)
    note = w.note if name != "real" or built else f"{w.note}\n\n{BUILD_HINT}"
    return (
        w.teacher,
        w.teacher_ref,
        w.student,
        w.prompts,
        w.reward,
        w.scale,
        example["prompt"],
        example["response"],
        w.student,
        w.teacher,
        w.teacher_ref,
        w.preferences,
        w.lora_rank,
        steps["steps"],
        steps["learning_rate"],
        w.reward,
        example["prompt"],
        note,
        gr.update(visible=not built),
    )


def build_view(status: dict[str, Any]) -> str:
    """The real world's build state as one line of HTML (`data-state` for tests)."""
    state, line = status["state"], views.esc(status.get("line", ""))
    text = {
        "idle": "",
        "running": f"Building the real-model world… <code>{line}</code>",
        "built": "The real-model world is built: choose it with the world switch above.",
        "failed": f"The build stopped: <code>{line}</code> (its log: real/build.log in the ADPA home)",
    }[state]
    return f"<div id='real-build-state' data-state='{state}' style='font-size:.9em'>{text}</div>"


def wire_real_build(h: Handlers, bar: SimpleNamespace) -> None:
    """Build button -> `adpa real build --quick` in a subprocess; a timer shows its progress until done."""

    def begin():
        status = start_real_build(h.loc.home)
        return build_view(status), gr.Timer(active=True)

    def poll():
        status = real_build_status(h.loc.home)
        done = status["state"] != "running"
        return build_view(status), gr.Timer(active=not done), gr.update(visible=status["state"] != "built")

    bar.build.click(guard(begin), None, [bar.progress, bar.timer], api_name="build_real_world")
    bar.timer.tick(
        guard(poll),
        None,
        [bar.progress, bar.timer, bar.build],
        api_visibility="private",
        show_progress="hidden",
    )
