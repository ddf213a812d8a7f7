"""The real-model world (DESIGN.md section 4b): SmolLM2-135M-Instruct as teacher base and student.

- `lexicon`: facts with known answers, topics, the wording of every instruction
- `prompts`: prompts with verifiable instructions from a seed (splits, held-out kinds) and their parser
- `judge`: the Python judge `reward(prompt, response)` with per-instruction results and hack penalties
- `pairs`: on-policy pairs, sampled from the model and ranked by the judge
- `build`: `adpa real build` (the DPO LoRA teacher through `train()`); `checks`: evaluation, health gates
"""

from adpa_core.real.judge import judge, reward, summarize
from adpa_core.real.prompts import parse_prompt

__all__ = ["judge", "parse_prompt", "reward", "summarize"]
