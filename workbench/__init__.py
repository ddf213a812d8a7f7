"""The ADPA Lab workbench: a Gradio app over `adpa_core` (see `workbench.app.build_app`).

    app.py         build_app(): the page and its load event; serve() for `adpa workbench`
    tabs/          one module per tab (advantages, align, chat): layout and event wiring, stable api_names
    handlers.py    plain data in / out: advantages, generation, chat, rewards, prompts (models load lazily)
    jobs.py        runs started from the app: `adpa train` subprocesses, status, cancel, the list of runs
    locations.py   run names and paths confined to the runs folder and the ADPA home
    cache.py       the small LRU of loaded models
    views.py       formatting of advantages: HTML heatmap, tables, plotly figures
    run_views.py   formatting of runs and replies: progress bar, loss curves, runs table, rewards

Importing this package loads no model and no torch code.
"""
