"""Alignment losses between the three embeddings of a training pair.

For each pair (imitation, reference) a batch holds three ``[B, D]`` embeddings:

- ``imitation``: the imitation tower + head on the vocal imitation (trained),
- ``reference``: the reference tower + head on the imitated sound (trained),
- ``clap``: frozen CLAP on the imitated sound (the target; precomputed, no gradient).

Three pairs are compared, each with its own weight: imitation-clap, reference-clap, imitation-reference.
Two forms:

- ``"cosine"``: ``1 - cos(a_i, b_i)`` averaged over the batch (the project log's three cosine losses). It
  only pulls matched pairs together, so nothing stops different sounds sharing an embedding.
- ``"infonce"``: cross-entropy over in-batch similarities ``a_i . b_j / temperature`` with the matched pair
  as the class (the QVIM baseline's loss), optionally in both directions. Rows that share a reference are
  positives of each other, so they are removed from each other's negatives (a batch may hold several
  imitations of one sound).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from qvimclap.config import require_known_keys
from qvimclap.errors import QvimclapError

LOSS_KINDS = ("infonce", "cosine")
TARGET_NEGATIVES = ("batch", "all")
#: The three compared pairs, in the order they are logged.
TERMS = ("imitation_clap", "reference_clap", "imitation_reference")


@dataclass(frozen=True)
class LossConfig:
    """Which loss, and how much each pair counts. A zero weight skips that term entirely.

    ``clap_temperature`` is the InfoNCE temperature of the two terms against CLAP targets, ``temperature``
    that of the imitation-reference term. CLAP embeddings of different sounds can sit in a narrow cone (a
    random CLAP's have mean cosine 0.996 on the built-in corpus): compared as they are, every logit is nearly
    the same and the softmax carries no signal. ``center`` (the default) compares the vectors after
    subtracting the mean CLAP target (given to :func:`alignment_loss`), which removes the cone's common
    direction; rankings by raw cosine are unchanged to first order. Without it, a sharper ``clap_temperature``
    (0.01, where CLIP/CLAP's own learned temperature ends up) is the other remedy; it measured worse.

    ``target_negatives`` is what a term against the targets contrasts with: ``"batch"``, the other targets in
    the batch (symmetric InfoNCE); ``"all"``, the targets of every training reference (a cross-entropy over
    all of them, with the targets given to :func:`alignment_loss` as ``bank``). The targets are frozen and
    cached, so all of them cost one ``[B, R]`` product per step.

    ``imitation_kind`` weighs :func:`kind_cross_entropy` of the imitations over those same targets, a
    target of the imitated sound's kind counting as right (at ``clap_temperature``, whatever ``kind`` and
    ``target_negatives`` say). It is there because imitations are recognised by kind less well than they are
    told apart within their kind (bench/results/recipe_sweep.md, session 9). Where every reference is a label
    of its own (VimSketch), it repeats the imitation-target cross-entropy over all targets.
    """

    kind: str = "infonce"
    imitation_clap: float = 1.0
    reference_clap: float = 1.0
    imitation_reference: float = 1.0
    temperature: float = 0.07
    clap_temperature: float = 0.07
    symmetric: bool = True
    center: bool = True
    target_negatives: str = "all"
    imitation_kind: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise QvimclapError(f"loss kind {self.kind!r} is not known; use one of {', '.join(LOSS_KINDS)}")
        weights = self.weights()
        weights["imitation_kind"] = self.imitation_kind
        if any(w < 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
            raise QvimclapError(f"loss weights must be >= 0 with at least one > 0, got {weights}")
        if self.target_negatives not in TARGET_NEGATIVES:
            raise QvimclapError(
                f"target_negatives {self.target_negatives!r} is not known; "
                f"use one of {', '.join(TARGET_NEGATIVES)}"
            )
        if self.temperature <= 0 or self.clap_temperature <= 0:
            raise QvimclapError(
                f"loss temperatures must be > 0, got {self.temperature} and {self.clap_temperature}"
            )

    def weights(self) -> dict[str, float]:
        return {term: float(getattr(self, term)) for term in TERMS}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LossConfig:
        require_known_keys(cls, data, "loss config")
        return cls(**data)


def cosine_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos(a_i, b_i)`` over matched rows of ``[B, D]`` tensors; 0 when aligned, 2 when opposite."""
    return (1.0 - F.cosine_similarity(a, b, dim=-1, eps=1e-8)).mean()


def info_nce(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    temperature: float = 0.07,
    symmetric: bool = True,
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE with in-batch negatives between matched rows of ``[B, D]`` tensors.

    Rows are L2-normalised here. ``groups`` (``[B]`` integers, e.g. the reference index) marks rows that are
    positives of each other: those off-diagonal similarities are masked out of the negatives. With
    ``symmetric`` the a->b and b->a cross-entropies are averaged.
    """
    a = F.normalize(a, dim=-1, eps=1e-8)
    b = F.normalize(b, dim=-1, eps=1e-8)
    logits = a @ b.T / temperature  # [B, B]
    if groups is not None:
        same = groups[:, None] == groups[None, :]
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(a.shape[0], device=a.device)
    loss = F.cross_entropy(logits, target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, target))
    return loss


def bank_logits(a: torch.Tensor, bank: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine similarities of the rows of ``a`` (``[B, D]``) to the rows of ``bank`` (``[R, D]``) over
    ``temperature``: ``[B, R]``."""
    return F.normalize(a, dim=-1, eps=1e-8) @ F.normalize(bank, dim=-1, eps=1e-8).T / temperature


def bank_cross_entropy(
    a: torch.Tensor, bank: torch.Tensor, index: torch.Tensor, *, temperature: float = 0.07
) -> torch.Tensor:
    """Cross-entropy of each row of ``a`` (``[B, D]``) over every row of ``bank`` (``[R, D]``), row
    ``index[i]`` being the class of ``a[i]``; cosine logits divided by ``temperature``."""
    return F.cross_entropy(bank_logits(a, bank, temperature), index)


def kind_cross_entropy(
    a: torch.Tensor, bank: torch.Tensor, bank_kind: torch.Tensor, kind: torch.Tensor, *, temperature: float
) -> torch.Tensor:
    """How surely each row of ``a`` (``[B, D]``) picks its own kind among the rows of ``bank`` (``[R, D]``):
    ``-log`` of the softmax mass (cosine logits over ``temperature``) on the bank rows whose ``bank_kind``
    (``[R]``) equals the row's ``kind`` (``[B]``). With every bank row a kind of its own it is
    :func:`bank_cross_entropy`."""
    same = bank_kind[None, :] == kind[:, None]
    log_p = bank_logits(a, bank, temperature).log_softmax(-1)
    return -log_p.masked_fill(~same, float("-inf")).logsumexp(-1).mean()


def alignment_loss(
    imitation: torch.Tensor,
    reference: torch.Tensor | None,
    clap: torch.Tensor,
    config: LossConfig,
    *,
    groups: torch.Tensor | None = None,
    center: torch.Tensor | None = None,
    bank: torch.Tensor | None = None,
    bank_index: torch.Tensor | None = None,
    bank_kind: torch.Tensor | None = None,
    kind: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the configured terms, and each unweighted term (detached) for logging.

    ``imitation``, ``reference`` and ``clap`` are ``[B, D]`` float32; ``reference`` may be None when both
    terms that use it have weight 0 (the reference tower is then not run at all). ``center`` (``[D]``, the
    mean CLAP target) is subtracted from all three before comparing when ``config.center`` is set.
    ``bank`` (``[R, D]``, every training reference's target) and ``bank_index`` (``[B]``, each row's
    reference in it) are needed when ``config.target_negatives == "all"``; ``bank`` with ``bank_kind``
    (``[R]``, each bank row's kind) and ``kind`` (``[B]``, each row's) when ``config.imitation_kind > 0``.
    """
    all_negatives = config.target_negatives == "all" and config.kind == "infonce"
    if all_negatives:
        assert bank is not None and bank_index is not None, 'target_negatives="all" needs the target bank'
    if config.center:
        assert center is not None, "LossConfig(center=True) needs the mean CLAP target"
        imitation, clap = imitation - center, clap - center
        reference = None if reference is None else reference - center
        bank = None if bank is None else bank - center
    pairs = {
        "imitation_clap": (imitation, clap),
        "reference_clap": (reference, clap),
        "imitation_reference": (imitation, reference),
    }
    total = imitation.new_zeros(())
    terms: dict[str, torch.Tensor] = {}
    for name, weight in config.weights().items():
        if weight == 0:
            continue
        a, b = pairs[name]
        assert a is not None and b is not None, f"loss term {name} needs the reference embeddings"
        if config.kind == "cosine":
            value = cosine_loss(a, b)
        elif all_negatives and name.endswith("_clap"):
            value = bank_cross_entropy(a, bank, bank_index, temperature=config.clap_temperature)
        else:
            temperature = config.clap_temperature if name.endswith("_clap") else config.temperature
            value = info_nce(a, b, temperature=temperature, symmetric=config.symmetric, groups=groups)
        terms[name] = value.detach()
        total = total + weight * value
    if config.imitation_kind > 0:
        assert bank is not None and bank_kind is not None and kind is not None, "the kind term needs kinds"
        value = kind_cross_entropy(imitation, bank, bank_kind, kind, temperature=config.clap_temperature)
        terms["imitation_kind"] = value.detach()
        total = total + config.imitation_kind * value
    return total, terms


def needs_reference(config: LossConfig) -> bool:
    """Whether any term uses the reference tower's embeddings."""
    return config.reference_clap > 0 or config.imitation_reference > 0
