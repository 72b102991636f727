"""The training methods, one module each, and their registry: the one place that lists them.

A method (trainer/heads/base.py's `Method`) owns its hyper-parameters, the modules it attaches to a
Retriever, its embedding sets, its training losses, its pretrained weights and what its training
set must provide. Adding a method is a module here and a line in METHODS.
"""
from __future__ import annotations

from trainer.heads.base import Method
from trainer.heads.baseline import Baseline
from trainer.heads.esa import ESA
from trainer.heads.sen import SEN
from trainer.heads.ssan import SSAN

METHODS: dict[str, type[Method]] = {m.name: m for m in (Baseline, ESA, SEN, SSAN)}
DEFAULT_METHOD = ESA.name  # TrainConfig's


def method_args(method: str, overrides: dict | None = None) -> dict:
    """The method's hyper-parameters: defaults updated by `overrides` (unknown keys refused)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    args = dict(METHODS[method].defaults)
    unknown = set(overrides or {}) - set(args)
    if unknown:
        raise ValueError(f"unknown {method} argument(s) {sorted(unknown)}; known: {sorted(args)}")
    args.update(overrides or {})
    return args


def get_method(method: str, overrides: dict | None = None) -> Method:
    """The named method with its hyper-parameters (errors as `method_args`)."""
    args = method_args(method, overrides)
    return METHODS[method](args)
