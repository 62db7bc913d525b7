"""Train QVIM towers + a projection head into a frozen CLAP's audio space (``qvimclap align``).

:func:`train_alignment` is laid out as numbered steps:

1. open the dataset and split it by reference (no reference on both sides);
2. compute (or reuse) the CLAP targets of every reference (:mod:`qvimclap.train.targets`); CLAP never runs
   per step;
3. build the aligned model from the QVIM source (or resume it from the last epoch checkpoint);
4. train with AdamW, linear warm-up then cosine decay, the encoder's mel augmentations (train mode), gradient
   clipping; log loss terms, per-group gradient norms and the embedding spread every ``log_every`` steps;
5. after each epoch: precise BatchNorm statistics, validation MRR in CLAP space (imitation tower vs the
   references' CLAP targets) and in QVIM space (imitation tower vs reference tower), a collapse check, an
   epoch checkpoint, and the best model so far (highest validation MRR, the mean of both spaces) written to
   the run folder as an aligned model folder;
6. a PNG of the curves and ``summary.json``.

The run folder ``out`` holds: ``config.json`` + ``model.safetensors`` (the best model; load it with
``AlignedModel.from_pretrained(out)``), ``align_config.json``, ``metrics.jsonl``, ``curves.png``,
``summary.json`` and ``checkpoints/epoch-NNN.pt`` (model, optimizer, scheduler, RNG states, history; the last
two are kept).

Determinism: the pair order and the crop of each clip are drawn from ``(seed, epoch, index)``, the
augmentations from torch's RNG seeded with ``seed + rank`` and saved in every checkpoint, so ``resume=True``
after a kill continues to the same result as an uninterrupted run (up to float round-off).

Distributed: started by ``torchrun`` (``WORLD_SIZE > 1``), every process joins a gloo/nccl group, trains a
shard of each epoch's pairs under DistributedDataParallel (``batch_size`` is the global batch), and rank 0
alone validates, logs and writes files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qvimclap.audio import load_audio
from qvimclap.config import require_known_keys
from qvimclap.device import resolve_device
from qvimclap.errors import QvimclapError, StoreError
from qvimclap.files import atomic_path
from qvimclap.models.aligned import SAMPLE_RATE, AlignedModel
from qvimclap.train.losses import LossConfig, alignment_loss, needs_reference

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
TRAIN_CONFIG_NAME = "align_config.json"
METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"
SUMMARY_NAME = "summary.json"
#: The model counts as collapsed when its validation query embeddings are spread less than this fraction of
#: the CLAP targets' spread (spread = 1 - mean pairwise cosine). Relative, because CLAP embeddings may sit in
#: a narrow cone themselves (a random CLAP's have mean cosine 0.996), where any absolute threshold misfires.
COLLAPSE_SPREAD_RATIO = 0.05


class TrainingError(QvimclapError):
    """Training cannot go on (non-finite loss, nothing to train on)."""


@dataclass(frozen=True)
class AlignConfig:
    """Every setting of an alignment run; saved as ``align_config.json``; unknown keys raise.

    The defaults are the ones measured best on the built-in synthetic corpus on a 2-core CPU (see the README).
    ``clip_duration_s`` is the model's input policy (zero-pad or cut to this length); training takes seeded
    random crops of this length from longer clips. ``qvim`` is any QVIM source (``scratch:mn04``, an
    EfficientAT ``.pt``, the QVIM baseline ``.ckpt``, a saved folder); ``clap`` any CLAP source (``scratch``,
    a transformers folder, a LAION ``.pt``, an AudioLDM ``.ckpt``).
    """

    data: str
    out: str
    qvim: str = "scratch:mn04"
    clap: str = "scratch"
    clap_preprocessing: str = "audioldm"
    shared_towers: bool = True
    head: str = "linear"
    loss: dict[str, Any] = field(default_factory=lambda: LossConfig().to_dict())
    clip_duration_s: float = 3.0
    epochs: int = 10
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.05
    grad_clip: float = 5.0
    val_fraction: float = 0.2
    seed: int = 0
    log_every: int = 10
    keep_checkpoints: int = 2
    bn_batches: int = 8
    time_mask_fraction: float = 0.2
    cache_dir: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        LossConfig.from_dict(self.loss)  # validates
        if self.epochs < 1 or self.batch_size < 2:
            raise QvimclapError(
                f"need epochs >= 1 and batch_size >= 2, got {self.epochs} and {self.batch_size}"
            )
        if self.lr <= 0 or self.clip_duration_s <= 0:
            raise QvimclapError(
                f"lr and clip_duration_s must be > 0, got {self.lr} and {self.clip_duration_s}"
            )
        if self.head not in ("linear", "mlp"):
            raise QvimclapError(f"head must be 'linear' or 'mlp', got {self.head!r}")

    @property
    def loss_config(self) -> LossConfig:
        return LossConfig.from_dict(self.loss)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlignConfig:
        require_known_keys(cls, data, "align config")
        return cls(**data)


@dataclass
class AlignResult:
    """What a run produced."""

    run_dir: Path
    best_epoch: int
    best_val: dict[str, float]
    history: list[dict[str, Any]]
    elapsed_s: float
    collapsed: bool


# -- data ----------------------------------------------------------------------------------------------------


def load_waveforms(paths: Sequence[Path], sample_rate: int, max_duration_s: float) -> list[np.ndarray]:
    """Read every file once as float32 mono ``[T]`` at ``sample_rate``, at most ``max_duration_s`` long."""
    return [load_audio(p, sample_rate, max_duration_s=max_duration_s, allow_silent=True) for p in paths]


def seeded_crop(x: np.ndarray, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``num_samples`` window of a longer clip; shorter clips are zero-padded at the end."""
    extra = x.shape[-1] - num_samples
    if extra <= 0:
        return np.pad(x, (0, -extra))
    start = int(rng.integers(0, extra + 1))
    return x[start : start + num_samples]


class PairDataset(torch.utils.data.Dataset):
    """Training pairs as ``(imitation [T], reference [T], reference index, pair index)``, crops seeded per
    epoch.

    ``queries`` / ``references`` hold the decoded clips; ``pairs`` is ``[P, 2]`` (query index, reference
    index). Item ``i`` of epoch ``e`` always gets the same crops: the generator is seeded with ``(seed, e,
    i)``.
    """

    def __init__(
        self,
        queries: list[np.ndarray],
        references: list[np.ndarray],
        pairs: np.ndarray,
        *,
        num_samples: int,
        seed: int = 0,
    ) -> None:
        self.queries, self.references, self.pairs = queries, references, np.asarray(pairs, dtype=np.int64)
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        q, r = self.pairs[index]
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        imitation = seeded_crop(self.queries[q], self.num_samples, rng)
        reference = seeded_crop(self.references[r], self.num_samples, rng)
        return imitation, reference, int(r), int(index)


def collate_pairs(items: list[tuple[np.ndarray, np.ndarray, int, int]]) -> dict[str, torch.Tensor]:
    """Stack items into ``imitation [B, T]``, ``reference [B, T]`` float32 and
    ``reference_index``/``pair_index``."""
    return {
        "imitation": torch.from_numpy(np.stack([it[0] for it in items]).astype(np.float32)),
        "reference": torch.from_numpy(np.stack([it[1] for it in items]).astype(np.float32)),
        "reference_index": torch.tensor([it[2] for it in items], dtype=torch.long),
        "pair_index": torch.tensor([it[3] for it in items], dtype=torch.long),
    }


def epoch_batches(num_items: int, batch_size: int, *, seed: int, epoch: int, rank: int = 0, world: int = 1):
    """This rank's batches of one epoch: a permutation seeded by ``(seed, epoch)``, sharded, full batches
    only."""
    order = np.random.default_rng([seed, epoch, 7]).permutation(num_items)
    per_rank = batch_size // world
    num_batches = num_items // (per_rank * world)
    order = order[: num_batches * per_rank * world].reshape(num_batches, world, per_rank)  # [N, world, b]
    return [batch[rank].tolist() for batch in order]


# -- optimisation --------------------------------------------------------------------------------------------


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float):
    """LR multiplier: linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine down to ``min_ratio``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def group_grad_norms(groups: dict[str, list[nn.Parameter]]) -> dict[str, float]:
    """L2 norm of the gradients of each parameter group (0 for a group without gradients)."""
    norms = {}
    for name, params in groups.items():
        grads = [p.grad.detach() for p in params if p.grad is not None]
        norms[name] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads))) if grads else 0.0
    return norms


def mean_pairwise_cosine(embeddings: np.ndarray | torch.Tensor) -> float:
    """Mean cosine similarity over distinct rows of L2-normalised ``[N, D]``: 1.0 means every row is the
    same."""
    x = torch.as_tensor(embeddings, dtype=torch.float64)
    n = x.shape[0]
    if n < 2:
        return 0.0
    total = x.sum(0)
    return float((total @ total - (x * x).sum()) / (n * (n - 1)))


@torch.no_grad()
def recalibrate_batch_norm(
    model: AlignedModel, dataset: PairDataset, *, num_batches: int, batch_size: int
) -> None:
    """Recompute every BatchNorm's running statistics as the plain average over ``num_batches`` training
    batches at the current weights ("precise BN").

    The running averages kept during training trail the weights; after a few hundred steps at a high learning
    rate they can be so far off that evaluation mode maps every clip to the same vector (seen on the built-in
    corpus: validation at chance while training-mode embeddings were fine). The batches are the first of a
    fixed permutation and the front end runs without augmentation, so no RNG is consumed (resume stays exact).
    """
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    if not norms:
        return
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the mean over all batches seen
    model.train()
    for tower in {id(t): t for t in (model.imitation_tower, model.reference_tower)}.values():
        tower.mel.eval()  # no augmentation (and no RNG use) while measuring
    for indices in epoch_batches(len(dataset), batch_size, seed=dataset.seed, epoch=0)[:num_batches]:
        batch = collate_pairs([dataset[i] for i in indices])
        model(batch["imitation"], batch["reference"])
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)


# -- validation ----------------------------------------------------------------------------------------------


@torch.no_grad()
def embed_clips(
    model: AlignedModel, clips: Sequence[np.ndarray], tower: str, batch_size: int = 64
) -> np.ndarray:
    """Embed decoded clips with one tower in eval mode (the model's input policy); ``[N, 512]`` float32."""
    return model.embedder(tower).embed(list(clips), batch_size=batch_size)


def retrieval_mrr(queries: np.ndarray, references: np.ndarray, true_ref: np.ndarray) -> tuple[float, float]:
    """MRR and recall@1 of queries ``[Q, D]`` against references ``[R, D]`` by cosine after centring on the
    references' mean: the geometry of a default qvimclap index, so the best epoch is the best deployed."""
    from qvimclap.evaluation import mrr, rank_by_similarity, recall_at_k, true_ranks
    from qvimclap.index import centered

    center = references.mean(0)
    queries, references = centered(queries, center), centered(references, center)
    ranks = true_ranks(rank_by_similarity(queries @ references.T), true_ref)
    return mrr(ranks), recall_at_k(ranks, 1)


def validate(model: AlignedModel, val: dict[str, Any]) -> dict[str, float]:
    """Validation metrics in both spaces, and the spread statistics of the query embeddings (for collapse)."""
    queries = embed_clips(model, val["queries"], "imitation")
    references = embed_clips(model, val["references"], "reference")
    clap_mrr, clap_r1 = retrieval_mrr(queries, val["targets"], val["true_ref"])
    qvim_mrr, qvim_r1 = retrieval_mrr(queries, references, val["true_ref"])
    return {
        "val_mrr": 0.5 * (clap_mrr + qvim_mrr),
        "val_mrr_clap": clap_mrr,
        "val_r1_clap": clap_r1,
        "val_mrr_qvim": qvim_mrr,
        "val_r1_qvim": qvim_r1,
        "val_mean_cosine": mean_pairwise_cosine(queries),
        "targets_mean_cosine": mean_pairwise_cosine(val["targets"]),
    }


def is_collapsed(metrics: dict[str, float]) -> bool:
    """Whether the query embeddings are nearly identical, relative to how spread the CLAP targets are."""
    spread = 1.0 - metrics["val_mean_cosine"]
    return spread < COLLAPSE_SPREAD_RATIO * max(1.0 - metrics["targets_mean_cosine"], 1e-6)


# -- run folder ----------------------------------------------------------------------------------------------


def prepare_run_dir(out: Path, config: AlignConfig, *, resume: bool, force: bool) -> None:
    """Create the run folder, or check it for ``resume``; an existing run needs ``force`` to be replaced."""
    config_path = out / TRAIN_CONFIG_NAME
    if resume:
        if not config_path.is_file():
            raise StoreError(
                f"{out}: nothing to resume (no {TRAIN_CONFIG_NAME}); drop --resume to start a run"
            )
        saved = AlignConfig.from_dict(json.loads(config_path.read_text()))
        given, before = config.to_dict(), saved.to_dict()
        given["data"], before["data"] = str(Path(config.data).resolve()), str(Path(saved.data).resolve())
        diff = [k for k in given if k not in ("out", "device") and given[k] != before[k]]
        if diff:
            raise StoreError(
                f"{out}: --resume with different settings ({', '.join(diff)}); "
                "repeat the original command with --resume, or start a new run with --force"
            )
        return
    if out.exists() and any(out.iterdir()):
        if not force:
            raise StoreError(f"{out}: already exists; pass --force to replace it or --resume to continue it")
        if not config_path.is_file():
            raise StoreError(
                f"{out}: not empty and not a qvimclap run folder; refusing to delete it, pick another"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(config_path, config.to_dict())


def _write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_checkpoint(out: Path, state: dict[str, Any], *, epoch: int, keep: int) -> Path:
    """Write ``checkpoints/epoch-NNN.pt`` atomically and remove all but the newest ``keep``."""
    folder = out / CHECKPOINT_DIR
    folder.mkdir(exist_ok=True)
    path = folder / f"epoch-{epoch:03d}.pt"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in sorted(folder.glob("epoch-*.pt"))[:-keep]:
        old.unlink()
    return path


def latest_checkpoint(out: Path) -> Path | None:
    found = sorted((out / CHECKPOINT_DIR).glob("epoch-*.pt"))
    return found[-1] if found else None


def write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """(Re)write ``metrics.jsonl`` from the history (one JSON object a line)."""
    with atomic_path(out / METRICS_NAME) as tmp:
        tmp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in history))


def plot_curves(history: list[dict[str, Any]], path: Path) -> Path:
    """PNG of the training loss (per logged step) and the validation MRR (per epoch, both spaces)."""
    from qvimclap.plots import new_figure, save_figure

    train = [h for h in history if h["event"] == "train"]
    val = [h for h in history if h["event"] == "val"]
    fig = new_figure(figsize=(10, 3.6))
    ax_loss, ax_val = fig.subplots(1, 2)
    ax_loss.plot([h["step"] for h in train], [h["loss"] for h in train], label="total")
    for term in ("imitation_clap", "reference_clap", "imitation_reference"):
        key = f"loss/{term}"
        if train and key in train[0]:
            ax_loss.plot([h["step"] for h in train], [h[key] for h in train], label=term, alpha=0.7)
    ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
    ax_loss.legend(fontsize=7)
    for key, label in (("val_mrr_clap", "CLAP space"), ("val_mrr_qvim", "QVIM space")):
        ax_val.plot([h["epoch"] for h in val], [h[key] for h in val], marker="o", label=label)
    if val:
        ax_val.axhline(val[0]["chance_mrr"], color="grey", linestyle=":", label="chance")
    ax_val.set(xlabel="epoch", ylabel="MRR", title="validation MRR")
    ax_val.legend(fontsize=7)
    return save_figure(fig, path)


# -- distributed ---------------------------------------------------------------------------------------------


def init_distributed() -> tuple[int, int]:
    """(rank, world size); joins the process group when started by torchrun with ``WORLD_SIZE > 1``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


# -- building blocks of a run --------------------------------------------------------------------------------


def load_clap(source: str, preprocessing: str):
    """The frozen CLAP audio encoder that makes the targets."""
    from qvimclap.models.clap import ClapEncoder

    return ClapEncoder.from_pretrained(source, preprocessing=preprocessing)


def build_model(config: AlignConfig, clap_fingerprint: dict[str, Any]) -> AlignedModel:
    """Towers from the QVIM source (the reference tower from a two-tower checkpoint's reference encoder when
    there is one, else a copy of the imitation one), and a freshly seeded head."""
    from qvimclap.errors import CheckpointError
    from qvimclap.models.qvim import QvimEncoder

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
        clap_source=config.clap,
        clap_preprocessing=config.clap_preprocessing,
        clap_fingerprint=clap_fingerprint,
        qvim_source=config.qvim,
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


def _index_pairs(dataset, query_index: dict[Path, int], reference_index: dict[Path, int]) -> np.ndarray:
    return np.array(
        [(query_index[p.query_path], reference_index[p.reference_path]) for p in dataset.pairs],
        dtype=np.int64,
    ).reshape(-1, 2)


def _prepare_data(config: AlignConfig, rank: int, world: int) -> dict[str, Any]:
    """Steps 1 and 2: split, CLAP targets (rank 0 fills the cache, then the others read it), decoded clips."""
    from qvimclap.data import open_dataset, split_by_reference
    from qvimclap.evaluation import chance_mrr
    from qvimclap.train.targets import clap_targets, default_cache_dir

    dataset = open_dataset(config.data)
    if not dataset.pairs:
        raise TrainingError(f"{config.data}: has no (imitation, reference) pairs to train on")
    train_set, val_set = split_by_reference(dataset, val_fraction=config.val_fraction, seed=config.seed)
    out = Path(config.out)
    cache_dir = Path(config.cache_dir) if config.cache_dir else default_cache_dir(dataset.root, out / "cache")
    clap = load_clap(config.clap, config.clap_preprocessing)
    references = list(dataset.references)
    if rank == 0:
        targets = clap_targets(references, clap, root=dataset.root, cache_dir=cache_dir)
    _barrier(world)
    if rank != 0:
        targets = clap_targets(references, clap, root=dataset.root, cache_dir=cache_dir)
    reference_index = {p: i for i, p in enumerate(references)}
    queries = list(dataset.queries)
    query_index = {p: i for i, p in enumerate(queries)}
    max_s = max(config.clip_duration_s, 10.0)
    query_clips = load_waveforms(queries, SAMPLE_RATE, max_s)
    reference_clips = load_waveforms(references, SAMPLE_RATE, max_s)
    val_pairs = _index_pairs(val_set, query_index, reference_index)
    val_refs = sorted(set(val_pairs[:, 1].tolist()))
    local = {r: i for i, r in enumerate(val_refs)}
    return {
        "fingerprint": clap.fingerprint(),
        "targets": torch.from_numpy(targets),
        "train": PairDataset(
            query_clips,
            reference_clips,
            _index_pairs(train_set, query_index, reference_index),
            num_samples=int(round(config.clip_duration_s * SAMPLE_RATE)),
            seed=config.seed,
        ),
        "val": {
            "queries": [query_clips[q] for q in val_pairs[:, 0]],
            "references": [reference_clips[r] for r in val_refs],
            "targets": targets[val_refs],
            "true_ref": np.array([local[r] for r in val_pairs[:, 1]]),
            "chance_mrr": chance_mrr(len(val_refs)),
        },
        "paths": {"queries": queries, "references": references},
    }


def _batch_files(dataset: PairDataset, pair_index: torch.Tensor, paths: dict[str, list[Path]]) -> str:
    rows = dataset.pairs[pair_index.numpy()]
    names = [f"{paths['queries'][q]} -> {paths['references'][r]}" for q, r in rows]
    return "; ".join(names[:8]) + (f"; and {len(names) - 8} more" if len(names) > 8 else "")


# -- the run -------------------------------------------------------------------------------------------------


def train_alignment(config: AlignConfig, *, resume: bool = False, force: bool = False, progress: bool = True):
    """Run (or resume) an alignment; returns an :class:`AlignResult` on rank 0 (None on other ranks)."""
    from tqdm.auto import tqdm

    start_time = time.monotonic()
    device = resolve_device(config.device)  # before any work: a wrong --device fails at once
    rank, world = init_distributed()
    out = Path(config.out)
    if config.batch_size % world:
        raise QvimclapError(f"batch_size {config.batch_size} must be divisible by the {world} processes")
    # 1-2. data, split, CLAP targets
    if rank == 0:
        prepare_run_dir(out, config, resume=resume, force=force)
    _barrier(world)
    data = _prepare_data(config, rank, world)
    train_data: PairDataset = data["train"]
    val = data["val"]
    loss_config = config.loss_config
    use_reference = needs_reference(loss_config)
    steps_per_epoch = len(
        epoch_batches(len(train_data), config.batch_size, seed=config.seed, epoch=0, world=world)
    )
    if steps_per_epoch == 0:
        raise TrainingError(
            f"{config.data}: {len(train_data)} training pairs make no full batch of {config.batch_size}; "
            "lower --batch-size"
        )
    train_refs = np.unique(train_data.pairs[:, 1])
    all_targets = data["targets"].to(device)
    center = all_targets[train_refs].mean(0)  # [D], the mean CLAP target of the training references
    # 3. model, optimiser, schedule
    model = build_model(config, data["fingerprint"]).to(device)
    model.train()
    groups = model.parameter_groups()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    total_steps = steps_per_epoch * config.epochs
    warmup = max(1, int(round(config.warmup_epochs * steps_per_epoch)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(total_steps, warmup, config.min_lr_ratio)
    )
    torch.manual_seed(config.seed + rank)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": 0, "val_mrr": -1.0}
    first_epoch, step = 1, 0
    if resume:
        checkpoint = latest_checkpoint(out)
        if checkpoint is not None:
            state = torch.load(checkpoint, map_location="cpu", weights_only=False)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            _set_rng_state(state["rng"])
            history, best = state["history"], state["best"]
            first_epoch, step = state["epoch"] + 1, state["step"]
            logger.info("resuming %s after epoch %d (step %d)", out, state["epoch"], step)
    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=not use_reference and not config.shared_towers,
        )
    if rank == 0:
        write_metrics(out, history)
    collapsed = False
    # 4-5. epochs
    for epoch in range(first_epoch, config.epochs + 1):
        train_data.set_epoch(epoch)
        batches = epoch_batches(
            len(train_data), config.batch_size, seed=config.seed, epoch=epoch, rank=rank, world=world
        )
        bar = tqdm(
            batches, desc=f"epoch {epoch}/{config.epochs}", disable=not progress or rank != 0, leave=False
        )
        for batch_indices in bar:
            batch = collate_pairs([train_data[i] for i in batch_indices])
            reference_index = batch["reference_index"].to(device)
            targets = all_targets[reference_index]
            imitation, reference = train_model(
                batch["imitation"], batch["reference"] if use_reference else None
            )
            loss, terms = alignment_loss(
                imitation,
                reference,
                targets,
                loss_config,
                groups=reference_index,
                center=center,
            )
            if not torch.isfinite(loss):
                files = _batch_files(train_data, batch["pair_index"], data["paths"])
                raise TrainingError(
                    f"non-finite loss ({loss.item()}) at epoch {epoch}, step {step + 1}; "
                    f"batch files: {files}; check these files or lower --lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norms = group_grad_norms(groups)
            nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if rank == 0 and (step % config.log_every == 0 or step == 1):
                row = {
                    "event": "train",
                    "epoch": epoch,
                    "step": step,
                    "lr": scheduler.get_last_lr()[0],
                    "loss": loss.item(),
                    **{f"loss/{k}": v.item() for k, v in terms.items()},
                    **{f"grad_norm/{k}": v for k, v in norms.items()},
                    "batch_mean_cosine": mean_pairwise_cosine(imitation.detach()),
                }
                history.append(row)
                _append_metrics(out, row)
        # 5. precise BatchNorm statistics, validation, collapse check, checkpoint, best model
        if rank == 0:
            recalibrate_batch_norm(
                model, train_data, num_batches=config.bn_batches, batch_size=config.batch_size
            )
            metrics = validate(model, val)
            model.train()
            collapsed = is_collapsed(metrics)
            if collapsed:
                logger.warning(
                    "epoch %d: embeddings collapsed (mean cosine between different imitations %.5f, between "
                    "their CLAP targets %.5f); lower --lr",
                    epoch,
                    metrics["val_mean_cosine"],
                    metrics["targets_mean_cosine"],
                )
            row = {
                "event": "val",
                "epoch": epoch,
                "step": step,
                **metrics,
                "chance_mrr": val["chance_mrr"],
                "collapsed": collapsed,
                "elapsed_s": time.monotonic() - start_time,
            }
            history.append(row)
            _append_metrics(out, row)
            logger.info(
                "epoch %d: val MRR clap %.4f qvim %.4f (chance %.4f)",
                epoch,
                metrics["val_mrr_clap"],
                metrics["val_mrr_qvim"],
                val["chance_mrr"],
            )
            if metrics["val_mrr"] > best["val_mrr"]:
                best = {"epoch": epoch, **metrics}
                model.save_pretrained(out)
            save_checkpoint(
                out,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": _rng_state(),
                    "epoch": epoch,
                    "step": step,
                    "history": history,
                    "best": best,
                },
                epoch=epoch,
                keep=config.keep_checkpoints,
            )
        _barrier(world)
    # 6. curves and summary
    if rank != 0:
        return None
    elapsed = time.monotonic() - start_time
    plot_curves(history, out / CURVES_NAME)
    summary = {"best_epoch": best["epoch"], "best": best, "elapsed_s": elapsed, "collapsed": collapsed}
    _write_json(out / SUMMARY_NAME, summary)
    return AlignResult(out, best["epoch"], best, history, elapsed, collapsed)


def _append_metrics(out: Path, row: dict[str, Any]) -> None:
    with open(out / METRICS_NAME, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
