"""Shared benchmark helpers: timing, peak memory, the machine, JSON results and markdown tables.

Peak memory. On CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` (exact tensor
memory). On CPU torch has no allocator statistics, so a case runs in a fresh subprocess and we read the
resident set's high-water mark (`VmHWM` in /proc/self/status), reset through /proc/self/clear_refs right
before the measured region: `peak_extra` = high-water mark - resident set at the start of the region, i.e.
the memory the region needed on top of what was already allocated (inputs, models). Tensors above glibc's
mmap threshold (32 MiB at most) are returned to the system when freed, so for the large tensors that matter
this tracks tensor memory; small allocations can stay cached in the heap, so small cases read high.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from adpa_core.models import pick_device

REPO_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = REPO_ROOT / "benchmarks" / "out"
RESULT_MARK = "BENCH-RESULT "
MIB = 1 << 20


# ---------------------------------------------------------------- devices and timing


def set_threads(threads: int | None) -> None:
    """CPU threads for this process and the case subprocesses it starts (None: torch's default).

    On a shared machine use fewer threads than cores: with every core busy, each parallel op waits for
    descheduled worker threads, which slows many small ops (the chunked path) far more than a few big ones.
    """
    if threads:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Wall seconds of each of `repeats` calls of `fn` after `warmup` untimed calls."""
    times = []
    for i in range(warmup + repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


# ---------------------------------------------------------------- peak memory


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) if match else 0


def reset_rss_peak() -> bool:
    """Resets VmHWM to the current resident set (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of a code region: `peak` (bytes, absolute) and `extra` (peak - memory at the start).

    CUDA: allocated tensor memory. CPU: resident set (see the module docstring); `exact` is False when the
    high-water mark could not be reset, and then `peak` is the process's lifetime peak.
    """

    def __init__(self, device: torch.device, collect: bool = True):
        self.device, self.collect = device, collect  # collect: gc first (~0.5 s with transformers loaded)
        self.start = self.peak = 0
        self.exact = True

    def __enter__(self) -> PeakMemory:
        if self.collect:
            gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.exact = reset_rss_peak()
            self.start = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self.peak = _status_kib("VmHWM") * 1024

    @property
    def extra(self) -> int:
        return max(self.peak - self.start, 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "peak_mib": self.peak / MIB,
            "peak_extra_mib": self.extra / MIB,
            "memory_method": "cuda_max_memory_allocated" if self.device.type == "cuda" else "rss_hwm",
            "memory_exact": self.exact,
        }


def available_memory_bytes() -> int:
    """MemAvailable of the machine (CPU runs decide from it which naive cases fit)."""
    text = Path("/proc/meminfo").read_text()
    match = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) * 1024 if match else 0


# ---------------------------------------------------------------- subprocess cases


def run_child(module: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Runs `python -m module --child SPEC` in a fresh process and returns the dict it printed.

    A failure (exception, out of memory, timeout) comes back as {"error": ...} instead of raising.
    """
    cmd = [sys.executable, "-m", module, "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    if proc.returncode < 0:
        return {"error": f"killed by signal {-proc.returncode} (out of memory?)"}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit code {proc.returncode}: {' | '.join(tail)}"}


def child_result(result: dict[str, Any]) -> None:
    """Prints a child's result where `run_child` finds it."""
    print(RESULT_MARK + json.dumps(result), flush=True)


# ---------------------------------------------------------------- machine, JSON, tables


def machine(device: torch.device | None = None) -> dict[str, Any]:
    """What ran the benchmark: CPU model, cores, memory, versions, accelerator, date (UTC)."""
    device = device or pick_device()
    cpu = platform.processor() or "unknown"
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = match.group(1).strip() if match else cpu
        mem = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        ram_gib = int(mem.group(1)) / (1 << 20) if mem else None
    except OSError:
        ram_gib = None
    import transformers

    info = {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gib": round(ram_gib, 1) if ram_gib else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": str(device),
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        # the machine is shared: how busy it was when the result was written (1, 5, 15 min)
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / (1 << 30), 1)
    return info


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command that ran, with `ADPA_BENCH_OUT=...` in front when it chose the output folder."""
    args = list(sys.argv[1:] if argv is None else argv)
    out = os.environ.get("ADPA_BENCH_OUT")
    prefix = [f"ADPA_BENCH_OUT={_relative(out)}"] if out else []
    return " ".join([*prefix, "python -m", module, *args])


def _relative(path: str) -> str:
    """`path` relative to the repository when inside it (a recorded command then reads the same anywhere)."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return path


def target(name: str, measured: float | None, limit: float, note: str = "") -> dict[str, Any]:
    """A target row: `measured` <= `limit` is met; None (not measured here) is neither."""
    return {
        "target": name,
        "limit": limit,
        "measured": measured,
        "met": None if measured is None else bool(measured <= limit),
        "note": note,
    }


def write_text(filename: str, text: str) -> Path:
    """benchmarks/out/<filename> (ignored by git), or under $ADPA_BENCH_OUT (the smoke tests use that)."""
    out = Path(os.environ.get("ADPA_BENCH_OUT") or OUT_DIR)
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    path.write_text(text, encoding="utf-8")
    return path


def write_json(name: str, payload: dict[str, Any]) -> Path:
    return write_text(f"{name}.json", json.dumps(payload, indent=2, default=str) + "\n")


def report(
    name: str, command: str, device: torch.device, config: dict, results: list, targets: list, **extra: Any
) -> dict[str, Any]:
    """Writes and returns the JSON payload of a benchmark; the first six keys are common to all (and checked
    by tests/test_benchmarks.py), `extra` holds benchmark-specific tables."""
    payload = {
        "benchmark": name,
        "command": command,
        "machine": machine(device),
        "config": config,
        "results": results,
        "targets": targets,
        **extra,
    }
    write_json(name, payload)
    return payload


def fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _cell(value: Any, spec: str) -> str:
    return fmt(value, spec).replace("|", "\\|")  # a bare | would end the cell


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A markdown table; `columns` are (key, header, format spec). A `|` inside a cell is escaped."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_cell(r.get(k), f) for k, _, f in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def targets_table(targets: Sequence[dict[str, Any]]) -> str:
    """Targets with their status; a `benchmark` column when the rows name one (the run_all summary)."""
    status = {True: "met", False: "NOT met", None: "not measured"}
    rows = [{**t, "status": status[t["met"]]} for t in targets]
    cols = [("benchmark", "benchmark", "")] if any("benchmark" in t for t in targets) else []
    cols += [("target", "target", ""), ("measured", "measured", ".3f"), ("status", "status", "")]
    return table(rows, [*cols, ("note", "note", "")])


def all_targets(payloads: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every target of several benchmarks' payloads, each row naming its benchmark (for `targets_table`)."""
    return [{"benchmark": p["benchmark"], **t} for p in payloads for t in p["targets"]]


def header(payload: dict[str, Any]) -> str:
    """The section heading and the line saying what ran where and when (and how busy the machine was)."""
    m = payload["machine"]
    where = m.get("gpu") or f"{m['cpu']} ({m['cpu_cores']} cores, {m['torch_threads']} torch threads)"
    load = m.get("load_average")
    busy = f"; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min)" if load else ""
    return (
        f"## {payload['benchmark']}\n\n`{payload['command']}` — {where}, torch {m['torch']}, "
        f"{m['date_utc']} UTC{busy}"
    )
