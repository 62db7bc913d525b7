"""The frozen target embedder an aligned model is trained into, named by an embedder spec.

``clap:scratch`` / ``clap:<folder | .pt | .ckpt>`` (a CLAP audio encoder, with its preprocessing), ``aisfx``
(the weights of the installed ``aisfx`` package) or ``aisfx:<checkpoint.pth | folder>``: the same names
``embed --encoder`` takes. Only a CLAP target gives a space AudioLDM can generate from.
"""

from __future__ import annotations

from qvimclap.errors import QvimclapError
from qvimclap.models.base import AudioEmbedder

#: Spec prefixes of the embedders an aligned model can be trained into.
TARGET_KINDS = ("clap", "aisfx")


def parse_target(spec: str) -> tuple[str, str]:
    """``spec`` -> ``(kind, source)``: ``"clap:scratch"`` -> ``("clap", "scratch")``, ``"aisfx"`` ->
    ``("aisfx", "")``. Raises :class:`QvimclapError` for anything else."""
    text = str(spec).strip()
    if text == "aisfx":
        return "aisfx", ""
    for kind in TARGET_KINDS:
        if text.startswith(kind + ":") and len(text) > len(kind) + 1:
            return kind, text[len(kind) + 1 :]
    raise QvimclapError(
        f"target {spec!r} is not a frozen embedder qvimclap can align into; use clap:scratch, "
        "clap:<CLAP folder or checkpoint>, aisfx or aisfx:<checkpoint.pth or folder>"
    )


def target_view_by_default(spec: str) -> bool:
    """Whether align joins the target view to the towers when not told (and prepare caches its features):
    for an aisfx target, where it was measured (bench/results/recipe_sweep.md, sessions 14-15)."""
    return parse_target(spec)[0] == "aisfx"


def is_clap_target(spec: str) -> bool:
    """Whether ``spec`` names a CLAP space (the only kind AudioLDM is conditioned on)."""
    return parse_target(spec)[0] == "clap"


def load_target(spec: str, *, clap_preprocessing: str = "audioldm") -> AudioEmbedder:
    """The target embedder ``spec`` names, on the CPU; ``clap_preprocessing`` applies to CLAP targets only."""
    kind, source = parse_target(spec)
    if kind == "clap":
        from qvimclap.models.clap import ClapEncoder

        return ClapEncoder.from_pretrained(source, preprocessing=clap_preprocessing)
    from qvimclap.models.aisfx import AisfxEncoder

    return AisfxEncoder.from_pretrained(source or None)
