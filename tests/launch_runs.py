"""Runs several `adpa train` configs one after another in one launched process group.

`accelerate launch --config_file configs/accelerate/<engine>.yaml -m tests.launch_runs A.yaml B.yaml ...`:
the same command-line entry point as `adpa train`, without paying the launch (imports, process group) once
per config. Exits with the first non-zero status.
"""

from __future__ import annotations

import sys

from adpa_core.cli import main

if __name__ == "__main__":
    for path in sys.argv[1:]:
        status = main(["train", path, "--quiet"])
        if status:
            sys.exit(status)
