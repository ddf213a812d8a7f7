"""Nothing untrusted is executed: no pickle loading, safe YAML, no remote code unless asked, no eval.

A static scan of every module of the library and the workbench, plus the real thing: a checkpoint file
crafted to run code when unpickled is refused and runs nothing.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from adpa_core.runs import CheckpointError, file_sha256

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted([*ROOT.joinpath("adpa_core").rglob("*.py"), *ROOT.joinpath("workbench").rglob("*.py")])


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unsafe_loading_in_the_sources(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    problems = []
    for node, name in _calls(tree):
        keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
        where = f"{path.name}:{node.lineno}"
        if name == "torch.load" and keywords.get("weights_only") != "True":
            problems.append(f"{where}: torch.load without weights_only=True")
        if name.startswith(("pickle.", "cPickle.", "dill.", "joblib.load", "marshal.loads")):
            problems.append(f"{where}: {name}")
        if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load") and "SafeLoader" not in keywords.get(
            "Loader", ""
        ).replace("_SafeLoader12", "SafeLoader"):
            problems.append(f"{where}: {name} without a safe loader")
        if name in ("eval", "exec"):
            problems.append(f"{where}: {name}()")
        if keywords.get("trust_remote_code") == "True":
            problems.append(f"{where}: trust_remote_code=True hard-coded")
        if name.endswith("np.load") and keywords.get("allow_pickle") == "True":
            problems.append(f"{where}: np.load(allow_pickle=True)")
        if name.startswith("subprocess.") and keywords.get("shell") == "True":
            problems.append(f"{where}: subprocess with shell=True")
    assert problems == []


def test_trust_remote_code_is_off_by_default():
    from adpa_core.config import ModelConfig

    assert ModelConfig().trust_remote_code is False


class _Exploit:
    def __reduce__(self):  # unpickling this would create the marker file
        import os

        return (os.system, (f"touch {_Exploit.marker}",))


def test_a_checkpoint_crafted_to_run_code_is_refused_and_runs_nothing(tmp_path):
    from adpa_core.checkpoint import load_state
    from adpa_core.runs import MANIFEST
    from tests.tiny import make_llama, make_tokenizer

    model = make_llama(make_tokenizer(), hidden=32, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    folder = tmp_path / "step-2"
    folder.mkdir()
    from adpa_core.checkpoint import rng_state, save_state

    save_state(folder, model, optimizer, scheduler, {"step": 2, "tokens": 0, "elapsed_s": 0.0})
    torch.save(rng_state(), folder / "rng-rank0.pt")
    _Exploit.marker = tmp_path / "pwned"
    torch.save({"state": _Exploit(), "param_groups": []}, folder / "optimizer.pt")  # a malicious file
    files = {p.name: file_sha256(p) for p in folder.iterdir()}
    (folder / MANIFEST).write_text(json.dumps({"step": 2, "files": files}))  # with a matching manifest
    with pytest.raises(CheckpointError, match="optimizer.pt|Weights only load failed|cannot resume"):
        load_state(folder, model, optimizer, scheduler, rank=0)
    assert not _Exploit.marker.exists()


def test_yaml_configs_cannot_construct_python_objects(tmp_path):
    from adpa_core.config import ConfigError, load_config

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        load_config(path)
    assert not marker.exists()
