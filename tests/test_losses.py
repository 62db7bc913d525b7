"""Alignment losses against hand-worked values."""

import math

import pytest
import torch

from qvimclap.errors import QvimclapError
from qvimclap.models.heads import HeadConfig, ProjectionHead
from qvimclap.train.losses import (
    LossConfig,
    alignment_loss,
    bank_cross_entropy,
    cosine_loss,
    info_nce,
    kind_cross_entropy,
    needs_reference,
)


def test_cosine_loss_hand_worked():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[1.0, 0.0], [0.0, -1.0]])  # cos = 1 and -1 -> losses 0 and 2
    assert cosine_loss(a, b).item() == pytest.approx(1.0)


def test_info_nce_hand_worked_one_direction():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    t = 0.5
    # row 0 logits [1, 0.6]/t, target 0; row 1 logits [0, 0.8]/t, target 1
    row0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.2)))
    row1 = -math.log(math.exp(1.6) / (math.exp(0.0) + math.exp(1.6)))
    got = info_nce(a, b, temperature=t, symmetric=False)
    assert got.item() == pytest.approx((row0 + row1) / 2, rel=1e-5)
    # b -> a: column view; logits.T rows: [1, 0]/t target 0, [0.6, 0.8]/t target 1
    col0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.0)))
    col1 = -math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))
    sym = info_nce(a, b, temperature=t, symmetric=True)
    assert sym.item() == pytest.approx(((row0 + row1) / 2 + (col0 + col1) / 2) / 2, rel=1e-5)


def test_info_nce_masks_rows_of_the_same_reference():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    b = a.clone()
    groups = torch.tensor([7, 7, 3])
    # rows 0 and 1 share a reference: with masking, their only negative is row 2 (cos 0);
    # row 2 keeps both others as negatives (cos 0 each)
    got = info_nce(a, b, temperature=1.0, symmetric=False, groups=groups)
    shared_row = -math.log(math.e / (math.e + 1.0))
    last_row = -math.log(math.e / (math.e + 2.0))
    assert got.item() == pytest.approx((2 * shared_row + last_row) / 3, rel=1e-5)
    unmasked = info_nce(a, b, temperature=1.0, symmetric=False)
    assert unmasked.item() > got.item()


def test_alignment_loss_weights_and_terms():
    torch.manual_seed(0)
    im, ref, clap = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
    config = LossConfig(
        kind="cosine",
        imitation_clap=2.0,
        reference_clap=0.0,
        imitation_reference=0.5,
        center=False,
        imitation_kind=0.0,
    )
    total, terms = alignment_loss(im, ref, clap, config)
    assert set(terms) == {"imitation_clap", "imitation_reference"}
    expected = 2.0 * cosine_loss(im, clap) + 0.5 * cosine_loss(im, ref)
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    only_clap = LossConfig(
        reference_clap=0.0, imitation_reference=0.0, center=False, target_negatives="batch", imitation_kind=0
    )
    assert not needs_reference(only_clap)
    total, terms = alignment_loss(im, None, clap, only_clap)
    assert set(terms) == {"imitation_clap"}


def test_loss_config_validates_and_round_trips():
    config = LossConfig(kind="cosine", temperature=0.1)
    assert LossConfig.from_dict(config.to_dict()) == config
    with pytest.raises(QvimclapError, match="unknown keys"):
        LossConfig.from_dict({"kind": "cosine", "margin": 1})
    with pytest.raises(QvimclapError, match="not known"):
        LossConfig(kind="triplet")
    with pytest.raises(QvimclapError, match="at least one"):
        LossConfig(imitation_clap=0, reference_clap=0, imitation_reference=0, imitation_kind=0)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_projection_heads_shapes_and_config(kind):
    config = HeadConfig(in_dim=960, kind=kind)
    head = ProjectionHead(config)
    assert head(torch.zeros(3, 960)).shape == (3, 512)
    assert HeadConfig.from_dict(config.to_dict()) == config
    num_params = sum(p.numel() for p in head.parameters())
    expected = 960 * 512 + 512 if kind == "linear" else 960 * 1024 + 1024 + 1024 * 512 + 512
    assert num_params == expected
    with pytest.raises(ValueError, match=r"\[B, 960\]"):
        head(torch.zeros(3, 10))


def test_clap_terms_use_their_own_temperature():
    torch.manual_seed(1)
    im, ref, clap = torch.randn(5, 8), torch.randn(5, 8), torch.randn(5, 8)
    config = LossConfig(
        temperature=0.2, clap_temperature=0.05, center=False, target_negatives="batch", imitation_kind=0
    )
    total, terms = alignment_loss(im, ref, clap, config)
    expected = {
        "imitation_clap": info_nce(im, clap, temperature=0.05),
        "reference_clap": info_nce(ref, clap, temperature=0.05),
        "imitation_reference": info_nce(im, ref, temperature=0.2),
    }
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-6)
    assert total.item() == pytest.approx(sum(v.item() for v in expected.values()), rel=1e-6)


def test_centered_loss_compares_deviations_from_the_mean_target():
    torch.manual_seed(2)
    mean = torch.randn(8)
    im, ref, clap = (
        mean + 0.1 * torch.randn(4, 8),
        mean + 0.1 * torch.randn(4, 8),
        mean + 0.1 * torch.randn(4, 8),
    )
    config = LossConfig(
        center=True,
        clap_temperature=0.07,
        imitation_reference=0.0,
        reference_clap=0.0,
        target_negatives="batch",
        imitation_kind=0.0,
    )
    total, _ = alignment_loss(im, ref, clap, config, center=mean)
    assert total.item() == pytest.approx(info_nce(im - mean, clap - mean, temperature=0.07).item(), rel=1e-6)
    # a constant shift of every vector changes nothing once centred on the shifted mean
    shifted, _ = alignment_loss(im + 3.0, ref + 3.0, clap + 3.0, config, center=mean + 3.0)
    assert shifted.item() == pytest.approx(total.item(), rel=1e-5)


def test_target_terms_with_all_negatives_classify_over_the_whole_bank():
    # two rows in the batch, a bank of three targets: each row's cross-entropy runs over all three
    im = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    index = torch.tensor([0, 2])
    config = LossConfig(
        reference_clap=0.0,
        imitation_reference=0.0,
        center=False,
        clap_temperature=1.0,
        target_negatives="all",
        imitation_kind=0.0,
    )
    total, terms = alignment_loss(im, None, bank[index], config, bank=bank, bank_index=index)
    row0 = -math.log(math.e / (math.e + 1.0 + math.exp(0.6)))
    row1 = -math.log(math.exp(0.8) / (1.0 + math.e + math.exp(0.8)))
    assert total.item() == pytest.approx((row0 + row1) / 2, rel=1e-5)
    # the in-batch form sees only the two targets of the batch: another (smaller) loss
    batch_only = LossConfig(**{**config.to_dict(), "target_negatives": "batch", "symmetric": False})
    assert alignment_loss(im, None, bank[index], batch_only)[0].item() < total.item()
    # the imitation-reference term is in-batch either way
    both = LossConfig(**{**config.to_dict(), "imitation_reference": 1.0})
    _, terms = alignment_loss(im, im.clone(), bank[index], both, bank=bank, bank_index=index)
    assert terms["imitation_reference"].item() == pytest.approx(info_nce(im, im).item(), rel=1e-6)
    with pytest.raises(QvimclapError, match="target_negatives"):
        LossConfig(target_negatives="everything")


def test_the_kind_term_counts_every_target_of_the_imitated_kind_as_right():
    im = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    bank_kind, kind = torch.tensor([0, 1, 0]), torch.tensor([0, 0])
    # row 0 picks kind 0 through targets 0 and 2; row 1 through the same two, with other logits
    row0 = -math.log((math.e + math.exp(0.6)) / (math.e + 1.0 + math.exp(0.6)))
    row1 = -math.log((1.0 + math.exp(0.8)) / (1.0 + math.e + math.exp(0.8)))
    value = kind_cross_entropy(im, bank, bank_kind, kind, temperature=1.0)
    assert value.item() == pytest.approx((row0 + row1) / 2, rel=1e-5)
    # every target a kind of its own: the cross-entropy over the whole bank
    index = torch.tensor([0, 2])
    alone = kind_cross_entropy(im, bank, torch.arange(3), index, temperature=0.1)
    assert alone.item() == pytest.approx(
        bank_cross_entropy(im, bank, index, temperature=0.1).item(), rel=1e-6
    )
    # one kind for the whole bank: nothing to learn
    assert kind_cross_entropy(im, bank, torch.zeros(3, dtype=torch.long), kind, temperature=1.0).item() == (
        pytest.approx(0.0, abs=1e-6)
    )
    # in alignment_loss: its own weight, logged as its own term, at the targets' temperature
    config = LossConfig(
        reference_clap=0.0, imitation_reference=0.0, center=False, clap_temperature=1.0, imitation_kind=0.5
    )
    args = dict(bank=bank, bank_index=index, bank_kind=bank_kind, kind=kind)
    total, terms = alignment_loss(im, None, bank[index], config, **args)
    assert terms["imitation_kind"].item() == pytest.approx(value.item(), rel=1e-6)
    assert total.item() == pytest.approx(terms["imitation_clap"].item() + 0.5 * value.item(), rel=1e-6)
    off = LossConfig(**{**config.to_dict(), "imitation_kind": 0.0})
    assert "imitation_kind" not in alignment_loss(im, None, bank[index], off, **args)[1]
    with pytest.raises(QvimclapError, match="imitation_kind"):
        LossConfig(imitation_kind=-1.0)
    LossConfig(imitation_clap=0, reference_clap=0, imitation_reference=0, imitation_kind=1.0)  # enough alone
