"""Several processes on accelerate's engines: DDP, FSDP2 and DeepSpeed ZeRO-3 (never a scheme of our own).

`accelerate launch --config_file configs/accelerate/{ddp,fsdp,zero3}.yaml` picks the engine; this module
holds the few places where the training loop has to know which one runs:

- `make_accelerator`: accelerate only puts FSDP and DeepSpeed on accelerators; on CPU processes (gloo) it
  falls back to plain data parallel without a word. Here the requested engine is switched on after
  accelerate set up the process group, so the same engine code runs on CPU (the tests) and on GPUs.
- `micro_batch` / `loss_scale`: gradient accumulation the way each engine counts it.
- `call_with_weight`: the chunked loss runs as a call of the output layer, so that the engine's hooks
  gather its sharded weight (FSDP2, ZeRO-3) and reduce the gradient back to the shard.
- `save_sharded` / `load_sharded` / `full_state_dict`: checkpoints through the engine's API
  (torch.distributed.checkpoint for FSDP, the DeepSpeed engine's own files) and the final weights.

Teachers are never sharded: each process loads them once (frozen, eval, no gradient; 4-bit or 8-bit when
asked), so any engine serves them the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import Tensor, nn

from .config import ConfigError, RunConfig
from .runs import CheckpointError

ENGINE_DIR = "engine"  # the engine's own checkpoint files inside checkpoints/step-N/
ENGINES = ("single", "ddp", "fsdp", "deepspeed")


def requested_engine() -> str | None:
    """The sharding engine `accelerate launch` was asked for (from its environment), or None."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "fsdp"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "deepspeed"
    return None


def engine_name(acc: Accelerator) -> str:
    """One of ENGINES for a prepared accelerator."""
    kind = acc.distributed_type
    if kind == DistributedType.FSDP:
        return "fsdp"
    if kind == DistributedType.DEEPSPEED:
        return "deepspeed"
    return "ddp" if acc.num_processes > 1 else "single"


def is_sharded(acc: Accelerator) -> bool:
    return engine_name(acc) in ("fsdp", "deepspeed")


def check_engine(cfg: RunConfig, engine: str | None, plugin: Any = None) -> None:
    """Refuses the combinations an engine cannot run, naming what to change."""
    if engine == "fsdp" and plugin is not None and plugin.fsdp_version != 2:
        raise ConfigError("FSDP1 is not supported: set fsdp_version: 2 (configs/accelerate/fsdp.yaml)")
    if engine != "deepspeed":
        return
    if cfg.model.student_quantization != "none":
        raise ConfigError(
            f"model.student_quantization={cfg.model.student_quantization} under DeepSpeed ZeRO-3: ZeRO-3 "
            "cannot partition bitsandbytes weights; train a QLoRA student with configs/accelerate/fsdp.yaml "
            "or ddp.yaml (a quantized teacher is fine: teachers are never partitioned)"
        )
    if plugin is not None and plugin.zero3_init_flag:
        raise ConfigError(
            "DeepSpeed zero3_init_flag: true would partition every model loaded in the process, the frozen "
            "teachers included (they run outside the engine); set zero3_init_flag: false "
            "(configs/accelerate/zero3.yaml): the student is partitioned when it is prepared"
        )


def make_accelerator(cfg: RunConfig) -> Accelerator:
    """The run's Accelerator, with the engine `accelerate launch` asked for, also on CPU processes."""
    from accelerate.state import PartialState

    shared = PartialState._shared_state  # kept between runs of one process (only AcceleratorState resets)
    if shared.get("_adpa_switched"):  # an earlier run here switched it: start from what accelerate made
        shared["distributed_type"] = shared.pop("_adpa_switched")
    acc = Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=cfg.model.device == "cpu")
    engine = requested_engine()
    if engine is None or acc.distributed_type != DistributedType.MULTI_CPU:
        if engine_name(acc) == "deepspeed":
            check_engine(cfg, engine, acc.state.deepspeed_plugin)
            _fill_deepspeed(acc.state.deepspeed_plugin, cfg, acc.num_processes)
        elif engine_name(acc) == "fsdp":
            check_engine(cfg, engine, acc.state.fsdp_plugin)
        return acc
    # CPU processes: accelerate set up gloo for DDP; switch its shared state to the requested engine, as
    # accelerate's own AcceleratorState does on GPUs (both shared dicts: a later AcceleratorState() copies
    # the PartialState one over).
    from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin

    state = acc.state
    if engine == "fsdp":
        plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* settings of the launch config
        check_engine(cfg, engine, plugin)
        if acc.mixed_precision != "no":
            plugin.set_mixed_precision(acc.mixed_precision)
        state.fsdp_plugin, kind = plugin, DistributedType.FSDP
    else:
        plugin = DeepSpeedPlugin()  # reads the ACCELERATE_DEEPSPEED_* settings of the launch config
        check_engine(cfg, engine, plugin)
        plugin.set_mixed_precision(acc.mixed_precision)
        plugin.select(_from_accelerator_state=True)
        state.deepspeed_plugins, kind = plugin, DistributedType.DEEPSPEED
        _fill_deepspeed(plugin, cfg, acc.num_processes)
    shared["_adpa_switched"] = shared["distributed_type"]
    state.distributed_type = shared["distributed_type"] = kind
    return acc


def _fill_deepspeed(plugin: Any, cfg: RunConfig, processes: int) -> None:
    """The run's batch, accumulation and clipping in DeepSpeed's config (the loop feeds no dataloader).

    Also: accelerate registers the config with transformers whatever zero3_init_flag says, and then every
    `from_pretrained` partitions the model it loads (zero.Init); the frozen teachers run outside the engine
    and must stay whole, so that registration is undone (the student is partitioned when prepared)."""
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    plugin.dschf = None
    t = cfg.train
    ds = plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = t.batch_size
    ds["gradient_accumulation_steps"] = t.grad_accum
    ds["train_batch_size"] = t.batch_size * t.grad_accum * processes
    ds["gradient_clipping"] = t.max_grad_norm  # 0 turns clipping off, as train.max_grad_norm does
    # final/ needs whole weights: gathered on save (ZeRO-3 keeps only partitions otherwise)
    ds.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True


# ---------------------------------------------------------------- the training step


@contextmanager
def micro_batch(acc: Accelerator, model: nn.Module, last: bool) -> Iterator[None]:
    """One micro-batch of an optimizer step: gradients are reduced (and DeepSpeed steps) after the last."""
    if engine_name(acc) != "deepspeed":
        with nullcontext() if last else acc.no_sync(model):
            yield
        return
    # accelerate's DeepSpeed backward reads this flag: accumulation boundary and engine.step() when set
    acc.gradient_state._set_sync_gradients(last)
    try:
        yield
    finally:
        acc.gradient_state._set_sync_gradients(True)


def loss_scale(acc: Accelerator, grad_accum: int) -> float:
    """Factor on the (globally normalised) loss before backward: every engine averages gradients over the
    processes, and DeepSpeed also divides by its accumulation steps; the step's counts are already global."""
    scale = float(acc.num_processes)
    return scale * grad_accum if engine_name(acc) == "deepspeed" else scale


def call_with_weight(head: nn.Module, fn: Callable[..., Tensor], *inputs: Tensor) -> Tensor:
    """`fn(weight, *inputs)` with the whole weight (V_rows, H) of the output layer `head`, whose gradient
    reaches the engine's shard. For the chunked loss, which uses the weight outside the model's forward.

    FSDP2: `unshard()` registers the all-gathered parameter on the module until FSDP's post-backward,
    which reduce-scatters its gradient to the shard (and reshards). DeepSpeed ZeRO-3 gathers a module's
    partitions in hooks around the module's forward and backward: `fn` runs as a forward of `head` (the loss
    in place of the logits), so the weight is whole in both and its gradient goes to ZeRO's reduction.
    """
    from torch.distributed.fsdp import FSDPModule

    if isinstance(head, FSDPModule):
        head.unshard()
        out = fn(head.weight, *inputs)
        if not torch.is_grad_enabled():  # no backward will reshard it (evaluation)
            head.reshard()
        return out
    if not hasattr(head.weight, "ds_id"):  # not a ZeRO-3 parameter: nothing to gather
        return fn(head.weight, *inputs)
    head.forward = lambda *xs: fn(head.weight, *xs)  # an instance attribute shadows Linear.forward
    try:
        return head(*inputs)
    finally:
        del head.forward


# ---------------------------------------------------------------- checkpoints and final weights


def _inner_optimizer(optimizer: Any) -> Any:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it


def save_sharded(acc: Accelerator, model: nn.Module, optimizer: Any, folder: Path) -> None:
    """Every process writes its shards of the trainable weights and optimizer state into `folder`."""
    if engine_name(acc) == "deepspeed":
        model.save_checkpoint(str(folder.parent), tag=folder.name, save_latest=False)
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    options = StateDictOptions(ignore_frozen_params=True)
    weights, optim = get_state_dict(model, _inner_optimizer(optimizer), options=options)
    dcp.save({"model": weights, "optim": optim}, checkpoint_id=str(folder))


def check_resume(acc: Accelerator, ckpt: Path) -> bool:
    """True when `ckpt` holds engine shards; refuses a checkpoint written under another kind of engine."""
    sharded, has_shards = is_sharded(acc), (ckpt / ENGINE_DIR).exists()
    if sharded != has_shards:
        wrote = "a sharding engine (FSDP / DeepSpeed)" if has_shards else "DDP or one process"
        raise CheckpointError(
            f"{ckpt} was written under {wrote}; resume it with the same accelerate config "
            f"(this process runs {engine_name(acc)})"
        )
    return sharded


def load_sharded(acc: Accelerator, model: nn.Module, optimizer: Any, folder: Path) -> None:
    """Restores what `save_sharded` wrote (each process reads its own shards)."""
    if engine_name(acc) == "deepspeed":
        path, _ = model.load_checkpoint(
            str(folder.parent), tag=folder.name, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {folder}")
        return
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    options = StateDictOptions(ignore_frozen_params=True)
    inner = _inner_optimizer(optimizer)
    weights, optim = get_state_dict(model, inner, options=options)
    state = {"model": weights, "optim": optim}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(
        model, inner, model_state_dict=state["model"], optim_state_dict=state["optim"], options=options
    )


def full_state_dict(acc: Accelerator, model: nn.Module) -> dict[str, Tensor] | None:
    """The whole state dict on the main process (None elsewhere); every process must call it."""
    state = acc.get_state_dict(model)
    return state if acc.is_main_process else None
