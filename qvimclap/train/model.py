"""The model an alignment run trains: QVIM towers from their source, a fresh head, the frozen target."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from qvimclap.models.aligned import AlignedModel
from qvimclap.train.config import AlignConfig


def load_clap(source: str, preprocessing: str):
    """The frozen CLAP audio encoder that makes the targets."""
    from qvimclap.models.clap import ClapEncoder

    return ClapEncoder.from_pretrained(source, preprocessing=preprocessing)


def load_target_embedder(config: AlignConfig):
    """The frozen target embedder of a run (:attr:`AlignConfig.target_spec`): a CLAP, aisfx, ..."""
    from qvimclap.models.target import load_target

    return load_target(config.target_spec, clap_preprocessing=config.clap_preprocessing)


def build_model(config: AlignConfig, target_fingerprint: dict[str, Any]) -> AlignedModel:
    """Towers from the QVIM source (the reference tower from a two-tower checkpoint's reference encoder when
    there is one, else a copy of the imitation one), and a freshly seeded head; the target is recorded."""
    from qvimclap.errors import CheckpointError
    from qvimclap.models.qvim import QvimEncoder
    from qvimclap.models.target import is_clap_target

    imitation = _with_time_mask(QvimEncoder.from_pretrained(config.qvim, tower="imitation"), config)
    reference = None
    if not config.shared_towers:
        try:
            reference = QvimEncoder.from_pretrained(config.qvim, tower="reference")
        except CheckpointError:
            reference = QvimEncoder.from_pretrained(config.qvim, tower="imitation")
        reference = _with_time_mask(reference, config)
    torch.manual_seed(config.seed)  # the head's init; the run seeds torch again before training
    return AlignedModel.from_towers(
        imitation,
        reference,
        head=config.head,
        clip_duration_s=config.clip_duration_s,
        clap_source=config.clap if is_clap_target(config.target_spec) else "",
        clap_preprocessing=config.clap_preprocessing,
        clap_fingerprint=target_fingerprint,
        qvim_source=config.qvim,
        target=config.target_spec,
    )


def _with_time_mask(encoder: nn.Module, config: AlignConfig) -> nn.Module:
    """The encoder with its training time mask scaled to the clip: ``time_mask_fraction`` of its frames.

    The QVIM baseline masks up to 200 frames of a 10 s clip (1000 frames); kept at 200 on a 3 s clip the mask
    would hide up to two thirds of it.
    """
    from qvimclap.models.qvim import QvimEncoder

    mel = encoder.config.mel
    frames = config.clip_duration_s * mel.sample_rate / mel.hop_length
    mel = dataclasses.replace(mel, time_mask=max(1, round(config.time_mask_fraction * frames)))
    scaled = QvimEncoder(dataclasses.replace(encoder.config, mel=mel), source=encoder.source)
    scaled.load_state_dict(encoder.state_dict())
    return scaled
