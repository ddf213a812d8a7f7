"""The embedded offline toy world (DESIGN.md section 4): data, reward, tokenizer and model sizes.

- `world`: who lives where and the arithmetic prompts; responses with their flaws recorded word by word
- `datasets`: the SFT set, the preference set and held-out prompts as JSONL (`write_datasets`)
- `reward`: the Python reward in [-1, 2] with a per-aspect breakdown and `summarize`
- `tokenizer`: the word-level tokenizer with a chat template (`<|end|>` ends a turn)
- `models`: Llama configs of the teacher and the ~9x smaller student, and `BUILD_RECIPE`
"""

from adpa_core.toy.datasets import DataSizes, build_rows, write_datasets
from adpa_core.toy.models import BUILD_RECIPE, count_parameters, toy_model_config
from adpa_core.toy.reward import parse_prompt, reward, reward_breakdown, summarize
from adpa_core.toy.tokenizer import END_OF_TURN, build_tokenizer, save_tokenizer
from adpa_core.toy.world import ToyWorld, make_world

__all__ = [
    "BUILD_RECIPE",
    "END_OF_TURN",
    "DataSizes",
    "ToyWorld",
    "build_rows",
    "build_tokenizer",
    "count_parameters",
    "make_world",
    "parse_prompt",
    "reward",
    "reward_breakdown",
    "save_tokenizer",
    "summarize",
    "toy_model_config",
    "write_datasets",
]
