"""Explicit registries with lazy imports: a name maps to "module:Class", imported on first use."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from bot.errors import ConfigError

__all__ = ["load"]


def load(registry: Mapping[str, str], name: str, what: str) -> Any:
    """The class registered under `name`; an unknown name lists the valid ones."""
    try:
        target = registry[name]
    except KeyError:
        raise ConfigError(f"unknown {what} {name!r}; known: {', '.join(registry)}") from None
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)
