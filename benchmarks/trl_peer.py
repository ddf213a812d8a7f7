"""Peer comparison: our KD step against TRL's GKDTrainer, same models, data, batch, loss and optimizer.

GKD with `lmbda=0` (never generates on-policy: trains on the dataset's responses) and `beta=0` computes
`KL(teacher || student)` at temperature 1 over the response tokens, summed and divided by the number of
counted tokens (trl/experimental/gkd/gkd_trainer.py, `generalized_jsd_loss`). Our `kd` objective with
`w_kl_chosen=1` and `reduction=token` computes that same term and, always, the NLL of the response on top
(`kd` = NLL + w * KL), so our step does slightly more work. GKDConfig derives from SFTConfig, whose
defaults are `bf16=True` (autocast) and `gradient_checkpointing=True`: both are turned off here to match.

Both train the same saved student against the same saved teacher on the same token ids (our tokenization;
GKD gets them through a collator, labels shifted back to the Hugging Face convention), with AdamW
(torch), constant learning rate 1e-5, no weight decay, gradient clipping at 1, the model dtype (float32 on
CPU, bf16 on CUDA) and no autocast. Cases:

- `ours_kd`: the library default (`train.chunked_loss=auto`: chunked at V >= 8192);
- `ours_kd_kl_only`: the same step without the NLL term (a benchmark-only patch of
  `objectives.term_weights` to `{"kl_chosen": 1}`): exactly GKD's loss, to separate the cost of NLL;
- `ours_kd_full`: `train.chunked_loss=off` (full logits, the same memory pattern as GKD);
- `trl_gkd`: `trl.experimental.gkd.GKDTrainer`, timed from `on_step_begin` to `on_step_end` (its data
  loading and logging fall outside; ours includes building the batch).

Each case runs in a fresh subprocess (peak memory = resident-set peak above the memory after set-up on
CPU, CUDA allocator peak on a GPU), in `--rounds` rounds whose order alternates (ABCD, DCBA, ...) so
that a change in the machine's load during the run affects every case alike; step times are pooled over
the rounds (median), memory is the largest of the rounds.

    python -m benchmarks.trl_peer [--quick] [--batch 4] [--response-words 480]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from . import common as C
from . import world as W

NAME = "trl_peer"
CASES = ("ours_kd", "ours_kd_kl_only", "trl_gkd", "ours_kd_full")
LR = 1e-5
KD_OBJECTIVE = {"w_kl_chosen": 1.0, "reduction": "token"}


def _world(spec: dict[str, Any]) -> W.World:
    fields = {k: v for k, v in spec["world"].items() if k != "seq_tokens"}
    return W.World(**fields)


def _step_record(times: list[float], losses: list[float], mem: C.PeakMemory, warmup: int) -> dict[str, Any]:
    timed = times[warmup:]
    return {"median_s": C.median(timed), "times_s": timed, "first_kl": losses[0], **mem.as_dict()}


def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    from unittest import mock

    from accelerate import Accelerator

    from adpa_core import objectives
    from adpa_core.runs import RunDir
    from adpa_core.train import optimizer_step, setup

    world, device = _world(spec), torch.device(spec["device"])
    train = {"chunked_loss": "off" if spec["case"] == "ours_kd_full" else "auto", "learning_rate": LR}
    name = f"{spec['case']}-{spec['round']}"
    cfg = W.run_config(world, Path(spec["out"]), name, "kd", spec["batch"], device.type, KD_OBJECTIVE, train)
    kl_only = spec["case"] == "ours_kd_kl_only"
    terms = mock.patch.object(objectives, "term_weights", lambda obj: {"kl_chosen": 1.0}) if kl_only else None
    with terms or contextlib.nullcontext():
        s = setup(cfg, RunDir(cfg.run_dir), Accelerator(cpu=device.type == "cpu"))
        times, kls = [], []
        with C.PeakMemory(device) as mem:
            for _ in range(spec["warmup"] + spec["steps"]):
                metrics: dict[str, float] = {}
                times += C.time_calls(lambda m=metrics: m.update(optimizer_step(s)), device, 0, 1)
                s.loop["step"] += 1
                kls.append(metrics["kl_chosen"])
    return {**_step_record(times, kls, mem, spec["warmup"]), "chunk_size": s.ctx.chunk_size}


def run_gkd(spec: dict[str, Any]) -> dict[str, Any]:
    import datasets
    from transformers import AutoModelForCausalLM, TrainerCallback

    try:
        from trl.experimental.gkd import GKDConfig, GKDTrainer
    except ImportError as exc:
        return {"error": f"trl is not installed ({exc}); pip install -r requirements-bench.txt"}

    from adpa_core.models import load_tokenizer
    from adpa_core.prepare import load_rows

    world, device = _world(spec), torch.device(spec["device"])
    tok = load_tokenizer(world.student)
    cfg = W.run_config(world, Path(spec["out"]), "gkd-data", "kd", spec["batch"], device.type)
    rows = load_rows(cfg, tok)
    # Ours: labels[t] predicts input_ids[t + 1]; Hugging Face (and GKD) shift inside: labels[t + 1].
    data = [{"input_ids": r["chosen_input_ids"], "labels": [-100] + r["chosen_labels"][:-1]} for r in rows]
    prompt_len = world.prompt_tokens

    def collate(features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids = torch.tensor([f["input_ids"] for f in features])  # all rows have one length
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": torch.tensor([f["labels"] for f in features]),
            "prompts": ids[:, :prompt_len],
            "prompt_attention_mask": torch.ones_like(ids[:, :prompt_len]),
        }

    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    student = AutoModelForCausalLM.from_pretrained(world.student, dtype=dtype)
    teacher = AutoModelForCausalLM.from_pretrained(world.teacher, dtype=dtype)
    total = spec["warmup"] + spec["steps"]
    args = GKDConfig(
        output_dir=str(Path(spec["out"]) / f"gkd-{spec['round']}"),
        per_device_train_batch_size=spec["batch"],
        max_steps=total,
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        lmbda=0.0,
        beta=0.0,
        seq_kd=False,
        # GKDConfig inherits SFTConfig's defaults bf16=True and gradient_checkpointing=True; ours runs in the
        # model dtype without autocast and without checkpointing, so both are switched off here.
        bf16=False,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=device.type == "cpu",
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.mem, self.times, self.losses, self.t0 = C.PeakMemory(device), [], [], 0.0

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            self.mem.__enter__()

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            C.sync(device)
            self.t0 = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            C.sync(device)
            self.times.append(time.perf_counter() - self.t0)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **k: Any) -> None:
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

        def on_train_end(self, *a: Any, **k: Any) -> None:
            self.mem.__exit__(None, None, None)

    settings = {"bf16": args.bf16, "gradient_checkpointing": args.gradient_checkpointing, "optim": args.optim}
    clock = Clock()
    trainer = GKDTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        data_collator=collate,
        train_dataset=datasets.Dataset.from_list(data),
        processing_class=tok,
        callbacks=[clock],
    )
    trainer.train()
    import trl

    record = _step_record(clock.times, clock.losses, clock.mem, spec["warmup"])
    return {**record, "trl": trl.__version__, "gkd_settings": settings}


def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    torch.manual_seed(0)
    return run_gkd(spec) if spec["case"] == "trl_gkd" else run_ours(spec)


def merge(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per case from its rounds: pooled step times, the largest memory, the first round's KL."""
    out = []
    for case in dict.fromkeys(r["case"] for r in runs):
        mine = [r for r in runs if r["case"] == case]
        ok = [r for r in mine if not r.get("error")]
        row = {**mine[0], "rounds": len(ok)}
        if not ok:
            out.append(row)
            continue
        times = [t for r in ok for t in r["times_s"]]
        row.update(ok[0], times_s=times, median_s=C.median(times), error=None)
        for key in ("peak_mib", "peak_extra_mib"):
            row[key] = max(r[key] for r in ok)
        out.append(row)
    return out


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    gkd = next((r for r in rows if r["case"] == "trl_gkd"), {})
    out = []
    for r in rows:
        out.append(
            {
                **{
                    k: r.get(k)
                    for k in ("case", "median_s", "peak_mib", "peak_extra_mib", "first_kl", "error")
                },
                "time_vs_gkd": C.ratio(r.get("median_s"), gkd.get("median_s")),
                "memory_vs_gkd": C.ratio(r.get("peak_extra_mib"), gkd.get("peak_extra_mib")),
            }
        )
    return out


def targets(comparison: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {r["case"]: r for r in comparison}
    ours = by["ours_kd"]
    note = "kd = NLL + KL" if ours["time_vs_gkd"] is not None else "GKD did not run: see the table"
    out = [
        C.target("our KD step time / TRL GKD step time (< 1)", ours["time_vs_gkd"], 1.0, note),
        C.target("our KD peak step memory / TRL GKD's (< 1)", ours["memory_vs_gkd"], 1.0, note),
    ]
    if "ours_kd_kl_only" in by:
        same = by["ours_kd_kl_only"]["time_vs_gkd"]
        out.append(C.target("our step with GKD's exact loss (KL only) / GKD, time", same, 1.0, "diagnostic"))
    return out


COLUMNS = [
    ("case", "case", ""),
    ("median_s", "step s (median)", ".3g"),
    ("time_vs_gkd", "time vs GKD", ".3f"),
    ("peak_extra_mib", "step peak MiB", ".0f"),
    ("peak_mib", "process peak MiB", ".0f"),
    ("memory_vs_gkd", "memory vs GKD", ".3f"),
    ("first_kl", "KL at step 1", ".4f"),
    ("error", "error", ""),
]


def render(payload: dict[str, Any]) -> str:
    cfg, w = payload["config"], payload["config"]["world"]
    desc = (
        f"V = {w['vocab']}, student {cfg['student']} ({w['student_params'] / 1e6:.2f} M compute params), "
        f"teacher {cfg['teacher']} ({w['teacher_params'] / 1e6:.2f} M), batch {cfg['batch']} x "
        f"{w['seq_tokens']} tokens ({w['response_tokens']} counted per row), trl {cfg.get('trl') or '—'}; "
        f"{cfg['rounds']} rounds of {cfg['steps']} timed steps after {cfg['warmup']} warmup, median over all "
        "timed steps. Step peak = peak above the memory after set-up (models loaded, optimizer created, no "
        "optimizer state yet), the largest of the rounds."
    )
    return "\n\n".join(
        [
            C.header(payload),
            desc,
            C.table(payload["comparison"], COLUMNS),
            C.targets_table(payload["targets"]),
        ]
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny models, a smoke run")
    p.add_argument("--vocab", type=int, default=None, help="default 32768 (quick 8192)")
    p.add_argument("--batch", type=int, default=None, help="default 4 (quick 2)")
    p.add_argument("--prompt-words", type=int, default=None, help="default 28 (quick 8)")
    p.add_argument("--response-words", type=int, default=None, help="default 480 (quick 24)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (default 3; quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per round (default 1)")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--rounds", type=int, default=None, help="default 2 (quick 1), order alternating")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per case")
    p.add_argument("--in-process", action="store_true", help="no subprocess per case (inexact memory)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.child:
        C.child_result(run_case(json.loads(args.child)))
        return {}
    C.set_threads(args.threads)
    device = C.pick_device(args.device)
    q = args.quick
    student, teacher = (W.QUICK_STUDENT, W.QUICK_TEACHER) if q else (W.STUDENT, W.TEACHER)
    vocab, batch = args.vocab or (8192 if q else 32768), args.batch or (2 if q else 4)
    prompt_words, response_words = (
        args.prompt_words or (8 if q else 28),
        args.response_words or (24 if q else 480),
    )
    steps, warmup = args.steps or (2 if q else 3), args.warmup if args.warmup is not None else 1
    rounds = args.rounds or (1 if q else 2)
    print(f"{NAME}: V={vocab}, batch {batch}, student {student}, teacher {teacher} on {device}", flush=True)
    runs = []
    cases = args.cases.split(",")
    with tempfile.TemporaryDirectory(prefix="adpa-bench-") as tmp:
        rows_needed = batch * (warmup + steps)
        world = W.build_world(
            Path(tmp) / "world", vocab, student, teacher, rows_needed, prompt_words, response_words
        )
        for rnd in range(rounds):
            for case in cases if rnd % 2 == 0 else cases[::-1]:
                spec = {
                    "case": case,
                    "round": rnd,
                    "world": world.as_dict(),
                    "out": str(Path(tmp) / "runs"),
                    "batch": batch,
                    "warmup": warmup,
                    "steps": steps,
                    "device": str(device),
                }
                print(f"  round {rnd + 1}/{rounds}: {case} ...", flush=True)
                if args.in_process or q:
                    runs.append({**spec, **run_case(spec)})
                else:
                    runs.append({**spec, **C.run_child(f"benchmarks.{NAME}", spec, args.timeout)})
    for r in runs:
        r.pop("world", None)
    rows = merge(runs)
    comparison = compare(rows)
    trl_version = next((r.get("trl") for r in rows if r.get("trl")), None)
    config = {
        "world": world.as_dict(),
        "student": str(student),
        "teacher": str(teacher),
        "batch": batch,
        "steps": steps,
        "warmup": warmup,
        "rounds": rounds,
        "trl": trl_version,
        "kd_objective": KD_OBJECTIVE,
        "gkd": {"lmbda": 0.0, "beta": 0.0, "seq_kd": False},
        "learning_rate": LR,
        "quick": q,
    }
    command = C.command_line(f"benchmarks.{NAME}", argv)
    payload = C.report(
        NAME, command, device, config, rows, targets(comparison), comparison=comparison, runs=runs
    )
    print(render(payload), flush=True)
    return payload


if __name__ == "__main__":
    main()
