"""The workbench's three tabs, one module each; `guard` turns user errors into messages in the page."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import gradio as gr

from ..locations import one_line


def guard(fn: Callable) -> Callable:
    """Turns user errors (ValueError, OSError: bad input, missing model...) into a one-line gr.Error."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(*args: Any) -> Any:
            try:
                yield from fn(*args)
            except (ValueError, OSError) as exc:
                raise gr.Error(one_line(exc), print_exception=False) from exc

        return stream

    @functools.wraps(fn)
    def call(*args: Any) -> Any:
        try:
            return fn(*args)
        except (ValueError, OSError) as exc:
            raise gr.Error(one_line(exc), print_exception=False) from exc

    return call


def named_range(component: Any) -> Any:
    """Makes a bounded gr.Number / gr.Slider name itself in its range error: Gradio's own check says only
    "Value 0 is less than minimum value 1e-06", with no field."""
    check = component.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return check(payload)
        except gr.Error as exc:
            lo, hi = component.minimum, component.maximum
            bounds = (
                f"from {lo:g} to {hi:g}"
                if lo is not None and hi is not None
                else (f"at least {lo:g}" if lo is not None else f"at most {hi:g}")
            )
            raise gr.Error(
                f"{component.label}={payload}: give a value {bounds}", print_exception=False
            ) from exc

    component.preprocess = preprocess
    return component


def after_error(event: Any, outputs: list, values: Callable[[], Any] | None = None) -> None:
    """After a failed `event` its outputs show `values()` (e.g. emptied results) or stay as they were, and
    lose Gradio's "Error" badge, which hid a table or left old results under it; the error itself shows
    once, as the message the event raised."""
    keep = lambda: tuple(gr.update() for _ in outputs) if len(outputs) > 1 else gr.update()  # noqa: E731
    event.failure(values or keep, None, outputs, api_visibility="private", show_progress="hidden")
