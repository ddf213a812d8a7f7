"""Speed and memory benchmarks (DESIGN.md section 2), each against a baseline measured in the same run.

    common.py       timing (warmup, repeats, median), peak memory, machine description, JSON, tables
    world.py        synthetic world: filler-word tokenizer of any size, random Llama models, exact-length rows
    loss_micro.py   naive (full logits) vs chunked loss: forward + backward time and peak memory
    step_ratio.py   ADPA / KD training steps against an SFT step on the same student (cached, online teacher)
    trl_peer.py     our KD step against TRL's GKDTrainer at equal settings (forward KL)
    cache_bench.py  teacher cache: bytes per token and build throughput
    gpu.py          CUDA only: real model shapes, tokens/s, peak memory, model-FLOP utilisation
    run_all.py      runs them all (`make bench`) and prints every table
    RESULTS.md      the measured tables: command, machine, date, targets

Each writes `benchmarks/out/<name>.json` and runs alone: `python -m benchmarks.<name> [--quick]`.
"""
