"""Preset selection shared by the config files (configs/<method>.py: get_config(preset))."""
from __future__ import annotations

import json
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


def _parse_unset(value: str):
    """A value for a field whose default is None (a typed placeholder): a JSON number or boolean
    as such, anything else as the string."""
    try:
        v = json.loads(value)
    except ValueError:
        return value
    return v if isinstance(v, (bool, int, float)) else value


def apply_override(config: ml_collections.ConfigDict, field: str, value: str) -> None:
    """Set the dotted `field` ("a.b") of `config` from the command-line string `value`, parsed
    with the type of the current value: JSON for bool / int / float (and tuples of them via
    their type), the string otherwise; a None (placeholder) field takes a JSON number or boolean
    as such and any other text as the string."""
    *path, leaf = field.split(".")
    node = config
    for part in path:
        node = node[part]
    old = node[leaf]
    node[leaf] = (_parse_unset(value) if old is None else
                  type(old)(json.loads(value) if isinstance(old, (bool, int, float)) else value))
