"""The workbench's three tabs, one module each; `guard` turns user errors into messages in the page."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import gradio as gr


def guard(fn: Callable) -> Callable:
    """Turns user errors (ValueError, OSError: bad input, missing model...) into a readable gr.Error."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(*args: Any) -> Any:
            try:
                yield from fn(*args)
            except (ValueError, OSError) as exc:
                raise gr.Error(str(exc), print_exception=False) from exc

        return stream

    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        except (ValueError, OSError) as exc:
            raise gr.Error(str(exc), print_exception=False) from exc

    return call
