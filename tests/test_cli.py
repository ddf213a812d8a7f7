"""The `adpa` command: help, errors as one line, train / generate / cache-teacher end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from adpa_core.cli import EXIT_NOT_BUILT, EXIT_USER_ERROR, SUBCOMMANDS, main
from adpa_core.config import save_config
from adpa_core.runs import RunDir
from tests.trainkit import build_world, make_cfg


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("cliworld"))


def test_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "adpa_core.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for name in ("toy", "train", "generate", "cache-teacher", "advantages", "eval", "reproduce", "workbench"):
        assert name in out.stdout


def test_unbuilt_subcommands_say_so_and_fail(capsys):
    unbuilt = [n for n, (_, _, handler) in SUBCOMMANDS.items() if handler is None]
    for name in unbuilt:
        assert main([name]) == EXIT_NOT_BUILT
        assert "not built yet" in capsys.readouterr().err


def test_demo_never_crashes(capsys, monkeypatch):
    help_text, add_args, handler = SUBCOMMANDS["workbench"]
    if handler is None:
        assert main(["demo"]) == 0
        assert "adpa" in capsys.readouterr().out
        return
    seen = []  # the real handler would serve until interrupted
    monkeypatch.setitem(SUBCOMMANDS, "workbench", (help_text, add_args, lambda args: seen.append(args) or 0))
    assert main(["demo"]) == 0
    assert seen and seen[0].host == "127.0.0.1" and seen[0].port == 7860 and not seen[0].share


def test_train_generate_and_cache_teacher(world, tmp_path, capsys):
    cfg = make_cfg(world, tmp_path, "kd", train={"max_steps": 2})
    save_config(cfg, tmp_path / "kd.yaml")
    assert main(["train", str(tmp_path / "kd.yaml"), "--set", "train.max_steps=3", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 3
    assert RunDir(cfg.run_dir).read_status()["state"] == "completed"

    out = tmp_path / "gen.jsonl"
    args = ["generate", "--model", str(cfg.run_dir), "--data", world["eval"], "--out", str(out)]
    assert main([*args, "--max-new-tokens", "5", "--limit", "3"]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["ex000", "ex001", "ex002"]
    assert all(len(r["token_ids"]) <= 5 for r in records)

    cache = tmp_path / "cache"
    assert (
        main(["cache-teacher", str(tmp_path / "kd.yaml"), "--out", str(cache), "--set", "objective.k=8"]) == 0
    )
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["k"] == 8 and stats["tokens"] > 0
    # KD needs no reference: k ids (uint16 at this vocabulary) + k DPO log-probs (fp16) + one float32 rest bin
    assert stats["bytes_per_token"] == 8 * 2 + 8 * 2 + 4


def test_bad_config_is_one_error_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("objective:\n  method: adpa\ntrain:\n  learning_rate: -1\n")
    assert main(["train", str(bad)]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "learning_rate" in err[0]


def test_missing_model_is_one_error_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: x\noutput_dir: {tmp_path}\nmodel:\n  student: {tmp_path}/nowhere\n")
    assert main(["train", str(cfg), "--quiet"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "error:" in err and "nowhere" in err and "Traceback" not in err
