"""Train the target view's imitation MLPs (``align --target-view``; :mod:`qvimclap.models.view`).

The frozen target network's features of every imitation are computed once and cached with the targets
(:func:`qvimclap.targets.view_features`); each member MLP learns to map them into the training references'
targets with align's loss (the cross-entropy over every training target, plus the kind term), on
standardised features with Gaussian noise. Seconds per member on a CPU; the features cost one target forward
pass per imitation, once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from qvimclap.models.view import TargetView, TargetViewConfig, feature_kind, member
from qvimclap.train.losses import bank_cross_entropy, kind_cross_entropy

STEPS = 600
BATCH_SIZE = 32
NOISE = 0.1
TEMPERATURE = 0.07


def fit_target_view(data: dict[str, Any], target: Any, *, seed: int, members: int = 5) -> TargetView:
    """A :class:`TargetView` trained on the training pairs of ``data`` (:func:`~qvimclap.train.data.
    prepare_data`'s dict, made with ``target_view``: it holds the target network's features of every query)
    with ``target``, the frozen embedder of the targets."""
    if data.get("query_features") is None:
        raise ValueError("fit_target_view needs prepare_data's query_features (AlignConfig.target_view)")
    pairs = data["train"].pairs  # [P, 2]: query index, reference index
    _, query_row = np.unique(pairs[:, 0], return_inverse=True)
    references, bank_row = np.unique(pairs[:, 1], return_inverse=True)
    features = torch.from_numpy(data["query_features"][np.unique(pairs[:, 0])]).double()
    targets = data["targets"][references].double()
    view = TargetView(
        TargetViewConfig(
            feature_dim=features.shape[1],
            embedding_dim=targets.shape[1],
            features=feature_kind(target),
            members=members,
        )
    )
    view.feature_mean.copy_(features.mean(0))
    view.feature_std.copy_(features.std(0) + 1e-6)
    view.center.copy_(targets.mean(0))
    bank = view.direction(targets.float())
    inputs = view.standardise(features.float())[query_row]
    kinds = data["reference_kind"]
    for i, mlp in enumerate(view.members):
        trained = _fit_member(
            inputs,
            torch.from_numpy(bank_row),
            bank,
            kinds[references],
            kinds[pairs[:, 1]],
            view.center,
            config=view.config,
            seed=seed * 1000 + i,
        )
        mlp.load_state_dict(trained.state_dict())
    return view.eval()


def _fit_member(
    inputs: torch.Tensor,
    rows: torch.Tensor,
    bank: torch.Tensor,
    bank_kind: torch.Tensor,
    kind: torch.Tensor,
    center: torch.Tensor,
    *,
    config: TargetViewConfig,
    seed: int,
) -> torch.nn.Module:
    """One MLP: its outputs, centred, against the centred training targets ``bank``."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the initial weights and the dropout masks
    mlp = member(config).train()
    optimizer = torch.optim.AdamW(mlp.parameters(), lr=1e-3, weight_decay=1e-2)
    for _ in range(STEPS):
        batch = torch.randint(0, len(inputs), (BATCH_SIZE,), generator=generator)
        noise = NOISE * torch.randn(BATCH_SIZE, inputs.shape[1], generator=generator)
        out = mlp(inputs[batch] + noise) - center
        loss = bank_cross_entropy(out, bank, rows[batch], temperature=TEMPERATURE) + kind_cross_entropy(
            out, bank, bank_kind, kind[batch], temperature=TEMPERATURE
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return mlp.eval()
