"""The workbench's layout and event wiring: `build_app()` returns the Gradio Blocks, `launch()` serves it.

Three tabs: Advantages (the teacher's per-token preference of a reply), Align (start, watch and cancel
`adpa train` runs) and Chat (the student before and after alignment, side by side). Every event calls a
`handlers.Handlers` method (plain data) and formats its result with `views`; user errors become a
`gr.Error` with the handler's message. Every public event has a stable `api_name`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gradio as gr

from adpa_core.paths import TOY_MODELS, adpa_home, toy_dir

from . import run_views
from .cache import settle
from .handlers import Handlers
from .jobs import RunManager
from .locations import Locations
from .tabs import guard
from .tabs.advantages import advantages_tab
from .tabs.align import align_tab
from .tabs.chat import chat_tab
from .tabs.world import on_world, wire_real_build, world_bar, world_fields
from .worlds import real_build_status

INTRO = (
    "# ADPA Lab workbench\n"
    "Advantage-guided distillation for preference alignment of small language models. The token advantage "
    "`A(s,a) = β (log π_dpo(a|s) − log π_ref(a|s))` is the aligned teacher's preference for each token: "
    "**Advantages** shows it per token, **Align** trains a student with it, **Chat** compares the results."
)


def build_app(
    home: str | None = None,
    runs_dir: str = "runs",
    max_concurrent_runs: int = 1,
    model_dirs: tuple[str, ...] = (),
    world: str | None = None,
) -> gr.Blocks:
    """The workbench on the ADPA home `home` (default $ADPA_HOME or ~/.cache/adpa) and the runs folder
    `runs_dir`. Loads no model: models load on first use. `model_dirs` are extra folders whose models
    may be loaded by path. `world`: the world a page opens on (`toy` or `real`; None: the real-model
    world once it is built, else the toy world)."""
    if home is not None:  # `toy:` names resolve through $ADPA_HOME, here and in the runs this app starts
        os.environ["ADPA_HOME"] = str(Path(home).expanduser())
    loc = Locations.create(adpa_home(), runs_dir, model_dirs)
    loc.runs_dir.mkdir(parents=True, exist_ok=True)
    h = Handlers(loc, RunManager(loc, max_concurrent_runs))
    with gr.Blocks(title="ADPA Lab workbench") as app:
        gr.Markdown(INTRO)
        bar = world_bar()
        with gr.Tabs(elem_id="tabs") as tabs:
            adv = advantages_tab(h)
            align = align_tab(h)
            chat = chat_tab(h, adv, tabs)
        filled = [align.watch, align.runs, align.dckd_run, chat.run, align.name, bar.world]
        fields = world_fields(adv, align, chat, bar)
        heatmap = guard(lambda *a: adv.compute_fn(*a) if a[0] and a[1] else (gr.update(),) * len(adv.outputs))
        switch = guard(lambda w, m: on_world(h, w, m))
        opened = guard(lambda m: on_load(h, m, world))
        app.load(opened, [align.method], filled, api_visibility="private").then(
            switch, [bar.world, align.method], fields, api_visibility="private"
        ).then(heatmap, adv.inputs, adv.outputs, api_visibility="private")
        bar.world.input(switch, [bar.world, align.method], fields, api_visibility="private").then(
            heatmap, adv.inputs, adv.outputs, api_visibility="private"
        )
        wire_real_build(h, bar)
    settle()
    return app


def launch(app: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False, **kwargs: Any):
    """Serves the app (no public share link unless `share`)."""
    return app.launch(server_name=host, server_port=port, share=share, **kwargs)


def toy_world_missing(home: str | Path) -> bool:
    toy = toy_dir(home)
    return not (toy / "manifest.json").exists() or any(
        not (toy / name / "config.json").exists() for name in TOY_MODELS
    )


def serve(
    home: str | None = None,
    runs_dir: str = "runs",
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    max_concurrent_runs: int = 1,
    model_dirs: tuple[str, ...] = (),
    toy: str | None = "quick",
) -> None:
    """`adpa workbench`: builds the toy world first if it is missing (`toy`: quick | full | None to skip),
    then serves the app until interrupted."""
    home = str(Path(home).expanduser()) if home else str(adpa_home())
    if toy and toy_world_missing(home):
        from adpa_core.toy.build import ensure_world

        print(
            f"Building the {toy} toy world in {toy_dir(home)} (once; a few minutes on a laptop CPU)...",
            flush=True,
        )
        ensure_world(home, quick=toy == "quick", progress=True)
    app = build_app(home, runs_dir, max_concurrent_runs, model_dirs)
    if real_build_status(Path(home))["state"] == "built":
        print("Opening on the real-model world (SmolLM2); the world switch goes back to the toy world.")
    else:
        print(
            "The real-model world (SmolLM2) is one button in the app away, or run `adpa real build --quick` "
            "(about 4 minutes on 2 free CPU cores); once built, the workbench opens on it.",
            flush=True,
        )
    print(f"ADPA Lab workbench on http://{host}:{port} (Ctrl+C stops it)", flush=True)
    launch(app, host, port, share, quiet=not share)  # Gradio prints the share link itself


def on_load(h: Handlers, method: str = "adpa", world: str | None = None) -> tuple[Any, ...]:
    """After a page (re)load everything comes from disk: the run shown is the active one, else the newest;
    ADPA+ starts from the newest finished DCKD run; the chat compares with the newest finished run; the run
    name is a fresh one (never a taken one); the app opens on the real-model world once it is built, else on
    the toy world (whose fields and first example `on_world` then sets)."""
    rows = h.list_runs()
    active = [r["name"] for r in rows if r["display"] in ("queued", "running")]
    names = [r["name"] for r in rows]
    finished = h.run_names(finished=True)
    dckd = h.run_names("dckd", finished=True)
    return (
        gr.update(choices=names, value=(active or names or [None])[0]),
        run_views.runs_table(rows),
        gr.update(choices=dckd, value=dckd[0] if dckd else None),
        gr.update(choices=finished, value=finished[0] if finished else None),
        h.fresh_run_name(method or "adpa"),
        world or ("real" if real_build_status(h.loc.home)["state"] == "built" else "toy"),
    )
