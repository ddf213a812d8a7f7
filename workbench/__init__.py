"""The ADPA Lab workbench: a Gradio app over `adpa_core` (see `workbench.app.build_app`).

    app.py         build_app(): the page and its load event; serve() for `adpa workbench`
    tabs/          one module per tab (advantages, align, chat): layout and event wiring, stable api_names;
                   world.py: the world switch (toy / real model) and the real world's build button
    handlers.py    plain data in / out: advantages, generation, chat, rewards, prompts (models load lazily)
    run_form.py    the Align form -> a RunConfig validated as `adpa train` does; its models checked
    worlds.py      the two worlds' defaults (models, data, reward, recipes), the reward-world check, the
                   real world's build as a subprocess, what real text needs (rendered prompt, judge checks)
    jobs.py        runs started from the app: `adpa train` subprocesses, status, cancel, the list of runs
    locations.py   run names and paths confined to the runs folder and the ADPA home; one-line errors
    vocab.py       words outside a tokenizer's vocabulary: lower-cased where that helps, counted
    cache.py       the small LRU of loaded models
    views.py       formatting of advantages: HTML heatmap (fixed colour scale), summary, tables
    figures.py     plotly figures of advantages, built in one pass
    run_views.py   formatting of runs and replies: progress bar, loss curves, runs table, rewards

Importing this package loads no model and no torch code.
"""
