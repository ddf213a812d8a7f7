"""Chat templates: rendering a conversation to text, the prompt's token ids, the end-of-turn token.

A tokenizer's own chat template is used. A tokenizer without one (a base model) renders with
`PLAIN_CHAT_TEMPLATE` (README: "Base models without a chat template"), whose end of turn is the tokenizer's
eos token; a warning says so once per tokenizer, and run records store `chat_template_id`. The config can
name the template instead (`model.chat_template`: `plain` or a Jinja file; `set_chat_template`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import weakref
from pathlib import Path
from typing import Any

from jinja2 import TemplateError

from adpa_core.data.sources import DataError

logger = logging.getLogger(__name__)

_MARKER = "ADPAENDOFTURNPROBE"
PLAIN = "plain"
# The plain prompt/response format for tokenizers without a chat template (base models):
#   [bos]{system}\n\nUser: {user}\n\nAssistant: {reply}{eos}\n\n ... and, to prompt a reply, "Assistant:".
# The end of an assistant turn is the tokenizer's eos token; bos is written when the tokenizer has one that
# differs from eos.
PLAIN_CHAT_TEMPLATE = (
    "{% if bos_token and bos_token != eos_token %}{{ bos_token }}{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] }}\n\n"
    "{% elif m['role'] == 'assistant' %}Assistant: {{ m['content'] }}{{ eos_token }}\n\n"
    "{% else %}{{ raise_exception('the plain template knows the roles system, user and assistant') }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
_warned_plain: weakref.WeakSet[Any] = weakref.WeakSet()  # tokenizers told about the fallback


def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of already-rendered template text (no special tokens added: the template has them)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def set_chat_template(tokenizer: Any, choice: str | None) -> None:
    """Applies `model.chat_template`: None keeps the tokenizer's own (or the plain fallback when it has
    none), `plain` sets PLAIN_CHAT_TEMPLATE, anything else is a path to a Jinja template file."""
    if choice is None:
        return
    if choice == PLAIN:
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
        return
    path = Path(choice).expanduser()
    try:
        tokenizer.chat_template = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"model.chat_template: cannot read the template file {path} ({exc})") from None


def chat_template(tokenizer: Any) -> str | dict[str, str]:
    """The template `render` uses: the tokenizer's own (a dict when it has several named ones), else
    PLAIN_CHAT_TEMPLATE (warned once per tokenizer)."""
    own = getattr(tokenizer, "chat_template", None)
    if own:
        return own
    if tokenizer.eos_token is None:
        raise DataError(
            f"the tokenizer {_name(tokenizer)!r} has no chat template and no eos token to end a turn with; "
            "set model.chat_template to a Jinja template file"
        )
    if tokenizer not in _warned_plain:
        _warned_plain.add(tokenizer)
        logger.warning(
            "the tokenizer %r has no chat template: chats are rendered with the plain template "
            "('User: ...' / 'Assistant: ...'), whose end of turn is its eos token %r (README: base models "
            "without a chat template; model.chat_template names another)",
            _name(tokenizer),
            tokenizer.eos_token,
        )
    return PLAIN_CHAT_TEMPLATE


def chat_template_id(tokenizer: Any) -> str:
    """What run records store about the template in use: `plain`, or `sha1:<12 hex>` of the template text."""
    template = chat_template(tokenizer)
    if template == PLAIN_CHAT_TEMPLATE:
        return PLAIN
    text = template if isinstance(template, str) else json.dumps(template, sort_keys=True)
    return "sha1:" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def _name(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def render(
    tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool, example_id: str | None = None
) -> str:
    """The chat template's text for `messages` (`chat_template(tokenizer)`); a failing template is a
    DataError."""
    own = chat_template(tokenizer) is getattr(tokenizer, "chat_template", None)
    extra = {} if own else {"chat_template": PLAIN_CHAT_TEMPLATE}
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt, **extra
        )
    except (TemplateError, ValueError) as exc:  # e.g. a template that refuses system messages
        where = f"example {example_id!r}: " if example_id is not None else ""
        roles = ", ".join(str(m.get("role")) for m in messages)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{where}the tokenizer's chat template cannot render messages with roles [{roles}] ({first})"
        ) from None


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The prompt as the model sees it before answering (template with add_generation_prompt=True)."""
    return encode(tokenizer, render(tokenizer, messages, generation_prompt=True))


def end_of_turn_id(tokenizer: Any) -> int:
    """The token that closes an assistant turn in the chat template (<|eot_id|>, <|im_end|>, ...)."""
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _MARKER}]
    text = render(tokenizer, probe, generation_prompt=False)
    special = set(tokenizer.all_special_ids) | {
        i for i, tok in tokenizer.added_tokens_decoder.items() if getattr(tok, "special", False)
    }
    if _MARKER in text:
        for token in encode(tokenizer, text.split(_MARKER, 1)[1]):
            if not tokenizer.decode([token]).strip():
                continue  # whitespace between the content and the end-of-turn token
            if token in special:
                return token
            break
    # The template closes assistant turns with no special token: the model can only learn to stop at eos.
    if tokenizer.eos_token_id is None:
        raise DataError("the chat template has no end-of-turn token and the tokenizer has no eos token")
    logger.warning("no end-of-turn token found in the chat template; using eos %r", tokenizer.eos_token)
    return tokenizer.eos_token_id
