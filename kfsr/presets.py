"""Preset selection shared by the config files (configs/<method>.py: get_config(preset))."""
from __future__ import annotations

from typing import Callable

import ml_collections


def build(file_name: str, preset: str | None, presets: tuple[str, ...],
          base: Callable[[], ml_collections.ConfigDict],
          variants: dict[str, Callable[[ml_collections.ConfigDict], None]],
          default: str = "cpu") -> ml_collections.ConfigDict:
    """`base()` changed in place by `variants[preset]` (presets without a variant are the base
    itself, e.g. "paper"). `preset` None or "" -> `default`; an unknown preset is a ValueError
    naming `configs/<file_name>`."""
    preset = preset or default
    if preset not in presets:
        raise ValueError(f"configs/{file_name}: unknown preset {preset!r}; expected one of {presets}")
    c = base()
    if preset in variants:
        variants[preset](c)
    return c
