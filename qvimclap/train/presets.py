"""Named alignment presets: JSON files shipped in ``qvimclap/presets/`` (``align --preset NAME``).

A preset file holds ``description`` (what it is for), ``settings`` (any :class:`AlignConfig` keys but
``data``/``out``; ``loss`` may name only the terms it changes) and optionally ``requires`` (keys the user must
give, such as a weights path no preset can know, each with a hint). A config is resolved in three layers:
the :class:`AlignConfig` defaults, then the preset's settings, then what the user gave explicitly; the
resolved config, preset name included, is what the run folder records in ``align_config.json``.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from qvimclap.config import require_known_keys
from qvimclap.errors import QvimclapError
from qvimclap.train.config import AlignConfig
from qvimclap.train.losses import LossConfig

PRESET_KEYS = ("description", "settings", "requires")


def preset_folder():
    """Where the shipped presets are (a folder inside the installed package)."""
    return resources.files("qvimclap") / "presets"


def preset_names() -> list[str]:
    """The presets shipped with qvimclap, sorted."""
    return sorted(p.name[: -len(".json")] for p in preset_folder().iterdir() if p.name.endswith(".json"))


def load_preset(name: str) -> dict[str, Any]:
    """The preset file ``name`` as a dict, checked: unknown names and unknown keys raise one line."""
    if name not in preset_names():
        raise QvimclapError(f"preset {name!r} is not known; use one of {', '.join(preset_names())}")
    path = preset_folder() / f"{name}.json"
    try:
        preset = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise QvimclapError(f"preset {name!r} ({path}) is not valid JSON: {err}") from None
    unknown = sorted(set(preset) - set(PRESET_KEYS))
    if unknown:
        raise QvimclapError(f"preset {name!r} has unknown keys {unknown}; known keys are {list(PRESET_KEYS)}")
    settings = preset.get("settings", {})
    require_known_keys(AlignConfig, settings, f"preset {name!r}")
    require_known_keys(LossConfig, settings.get("loss", {}), f"preset {name!r} loss")
    fixed = sorted({"data", "out", "preset"} & set(settings))
    if fixed:
        raise QvimclapError(f"preset {name!r} may not set {fixed}; they belong to each run")
    return preset


def resolve_align_config(
    *, data: str, out: str, preset: str | None = None, overrides: dict[str, Any] | None = None
) -> AlignConfig:
    """The config of a run: defaults, then ``preset``'s settings, then ``overrides`` (what the user gave).

    ``overrides`` holds :class:`AlignConfig` keys; its ``loss`` may name only some terms (they replace the
    preset's one by one). Raises :class:`QvimclapError` for an unknown preset or key, or a required key that
    was not given.
    """
    overrides = dict(overrides or {})
    require_known_keys(AlignConfig, overrides, "align settings")
    require_known_keys(LossConfig, overrides.get("loss", {}), "loss settings")
    settings: dict[str, Any] = {}
    if preset is not None:
        spec = load_preset(preset)
        settings = dict(spec.get("settings", {}))
        missing = [hint for key, hint in spec.get("requires", {}).items() if key not in overrides]
        if missing:
            raise QvimclapError(f"preset {preset!r} needs {'; '.join(missing)}")
    loss = {**LossConfig().to_dict(), **settings.pop("loss", {}), **overrides.pop("loss", {})}
    values = {**settings, **overrides, "loss": loss, "data": str(data), "out": str(out), "preset": preset}
    return AlignConfig.from_dict(values)
