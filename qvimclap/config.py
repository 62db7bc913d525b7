"""Configs are frozen dataclasses that round-trip through JSON; a key the dataclass does not have raises."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from qvimclap.errors import QvimclapError


def require_known_keys(
    cls: type, data: Mapping[str, Any], what: str, error: type[QvimclapError] = QvimclapError
) -> None:
    """Raise ``error`` naming every key of ``data`` that is not a field of the dataclass ``cls``."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise error(f"{what} has unknown keys {unknown}; known keys are {known}")
