"""Convert LAION CLAP ``.pt`` and original AudioLDM ``.ckpt`` checkpoints to transformers' CLAP layout.

A LAION checkpoint stores the CLAP module's tensors under ``state_dict`` (sometimes with a ``module.``
prefix); an AudioLDM checkpoint stores its conditioning CLAP under ``state_dict`` with the prefix
``cond_stage_model.model.``. Both use LAION's names (``audio_branch.*``, ``audio_projection.*``,
``text_branch.*``, ``text_projection.*``). The rules (``reference/clap/clap-audio.json``; transformers' own
conversion script applies the same):

1. strip the prefix;
2. substring replacements in order (:data:`SUBSTRING_RULES`), ``<x>_projection.0.`` / ``.2.`` -> ``linear1`` /
   ``linear2``, and every ``qkv`` tensor split into three equal row chunks -> ``query``, ``key``, ``value``;
3. drop only the keys in :data:`DROPPED_KEY_PATTERNS` (STFT kernels, the mel matrix, the AudioSet head,
   shifted-window masks: things transformers recomputes or does not have);
4. load strictly: a missing tensor or any other unexpected tensor is an error naming it.

The audio architecture (HTSAT tiny, base, or other widths/depths) is read from the tensor shapes. Fused CLAP
checkpoints (``enable_fusion``) are refused: AudioLDM's CLAP is unfused.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from qvimclap.errors import CheckpointError
from qvimclap.files import locked_temp_dir

if TYPE_CHECKING:
    from transformers import ClapAudioConfig, ClapAudioModelWithProjection, ClapTextConfig

logger = logging.getLogger(__name__)

#: Prefixes stripped from checkpoint keys (AudioLDM first: its keys never start with ``module.``).
PREFIXES = ("cond_stage_model.model.", "module.")

#: Applied in this order to every key (after stripping the prefix).
SUBSTRING_RULES = (
    ("text_branch", "text_model"),
    ("audio_branch", "audio_model.audio_encoder"),
    ("attn", "attention.self"),
    ("self.proj", "output.dense"),
    ("attention.self_mask", "attn_mask"),
    ("mlp.fc1", "intermediate.dense"),
    ("mlp.fc2", "output.dense"),
    ("norm1", "layernorm_before"),
    ("norm2", "layernorm_after"),
    ("bn0", "batch_norm"),
)

#: Original keys (prefix stripped) with no transformers counterpart: the only ones a conversion may drop.
DROPPED_KEY_PATTERNS = tuple(
    re.compile(p)
    for p in (
        r"^audio_branch\.head\.",
        r"^audio_branch\.tscam_conv\.",
        r"^audio_branch\.layers\.\d+\.blocks\.\d+\.attn_mask$",
        r"^audio_branch\.spectrogram_extractor\.",
        r"^audio_branch\.logmel_extractor\.",
        r"^text_transform\.",
        r"^audio_transform\.",
    )
)

#: Converted names that are kept when the target model has them and may be absent or dropped otherwise:
#: the contrastive logit scales (a full ``ClapModel`` has them, the audio tower does not) and the token-index
#: buffers of the RoBERTa text tower (some transformers versions save them, the model recomputes them).
OPTIONAL_KEYS = frozenset(
    {
        "logit_scale_a",
        "logit_scale_t",
        "text_model.embeddings.position_ids",
        "text_model.embeddings.token_type_ids",
    }
)

_FUSION_MARKERS = ("mel_conv2d", "fusion_model")
_PROJECTION = re.compile(r"_projection\.([02])\.")


def read_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read the tensors of a ``.pt`` / ``.ckpt`` file: its ``state_dict`` (or the top-level dict of tensors).

    Files are read with ``torch.load(weights_only=True)``; a file that needs arbitrary pickled objects is
    refused unless ``allow_pickle`` (only for files you trust: unpickling can run code).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=not allow_pickle, mmap=_is_zip(path))
    except Exception as err:  # torch raises many types for non-checkpoint or pickle-only files
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        hint = (
            ""
            if allow_pickle
            else f" If you trust the file, convert it once with `qvimclap convert-clap {path} OUT_FOLDER "
            "--allow-pickle` (unpickling may run code) and use OUT_FOLDER."
        )
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint ({first}).{hint}") from None
    state = raw.get("state_dict", raw) if isinstance(raw, Mapping) else None
    if not isinstance(state, Mapping) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path}: holds no state_dict of tensors; expected a LAION CLAP .pt or AudioLDM .ckpt"
        )
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def extract_clap_state_dict(state: Mapping[str, torch.Tensor], *, source: str) -> dict[str, torch.Tensor]:
    """Keep the CLAP tensors of a LAION or AudioLDM state_dict, prefix stripped; refuse other checkpoints."""
    for prefix in PREFIXES:
        if any(k.startswith(prefix + "audio_branch.") for k in state):
            clap = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            break
    else:
        clap = dict(state)
    if not any(k.startswith("audio_branch.") for k in clap):
        raise CheckpointError(
            f"{source}: not a CLAP checkpoint: no 'audio_branch.*' tensors (first keys: "
            f"{', '.join(list(state)[:3]) or 'none'}). Expected a LAION CLAP .pt (audio_branch.*) or "
            "an AudioLDM .ckpt (cond_stage_model.model.audio_branch.*); QVIM/EfficientAT files go to --qvim"
        )
    fused = sorted({m for m in _FUSION_MARKERS for k in clap if m in k})
    if fused:
        raise CheckpointError(
            f"{source}: a fused CLAP checkpoint ({', '.join(fused)} tensors); only unfused CLAP (AudioLDM's "
            "and laion/clap-htsat-unfused) is supported"
        )
    return clap


def convert_key(key: str) -> str:
    """One LAION/AudioLDM key (prefix stripped, no ``qkv``) -> its transformers name."""
    for old, new in SUBSTRING_RULES:
        key = key.replace(old, new)
    return _PROJECTION.sub(
        lambda m: "_projection.linear1." if m.group(1) == "0" else "_projection.linear2.", key
    )


def is_dropped(key: str) -> bool:
    """True for an original key (prefix stripped) that has no transformers counterpart."""
    return any(p.search(key) for p in DROPPED_KEY_PATTERNS)


def convert_state_dict(clap: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """LAION-named CLAP tensors -> (transformers-named tensors, dropped original keys)."""
    converted: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in clap.items():
        if is_dropped(key):
            dropped.append(key)
            continue
        new_key = convert_key(key)
        if "qkv" in new_key:
            if value.shape[0] % 3:
                raise CheckpointError(
                    f"tensor {key!r} of shape {list(value.shape)} cannot be split into q, k, v"
                )
            for name, chunk in zip(("query", "key", "value"), value.chunk(3, dim=0), strict=True):
                converted[new_key.replace("qkv", name)] = chunk.contiguous()
        else:
            converted[new_key] = value
    return converted, dropped


def infer_audio_config(converted: Mapping[str, torch.Tensor]) -> ClapAudioConfig:
    """The HTSAT audio config from transformers-named tensor shapes (tiny: width 96, depths 2-2-6-2)."""
    from transformers import ClapAudioConfig

    enc = "audio_model.audio_encoder."
    try:
        width = converted[enc + "patch_embed.proj.weight"].shape[0]
        depths, heads = _layer_shapes(converted, enc)
        table = converted[enc + "layers.0.blocks.0.attention.self.relative_position_bias_table"]
        hidden = converted[enc + "norm.weight"].shape[0]
        mel_bins = converted[enc + "batch_norm.weight"].shape[0]
        fc1 = converted[enc + "layers.0.blocks.0.intermediate.dense.weight"]
        projection_dim = converted["audio_projection.linear2.weight"].shape[0]
    except KeyError as err:
        raise CheckpointError(f"CLAP audio tower lacks the tensor {err.args[0]!r}") from None
    window = (math.isqrt(table.shape[0]) + 1) // 2  # table has (2w - 1)^2 rows
    if hidden != width * 2 ** (len(depths) - 1):
        raise CheckpointError(
            f"CLAP audio tower: final width {hidden} != patch width {width} x 2^{len(depths) - 1}"
        )
    return ClapAudioConfig(
        patch_embeds_hidden_size=int(width),
        depths=depths,
        num_attention_heads=heads,
        window_size=int(window),
        hidden_size=int(hidden),
        num_mel_bins=int(mel_bins),
        mlp_ratio=float(fc1.shape[0] / fc1.shape[1]),
        projection_dim=int(projection_dim),
        enable_fusion=False,
    )


def infer_text_config(converted: Mapping[str, torch.Tensor]) -> ClapTextConfig | None:
    """The RoBERTa text config from tensor shapes, or None when there is no text tower.

    The number of attention heads is not visible in shapes: it is RoBERTa-base's 12 (AudioLDM's and LAION's).
    """
    from transformers import ClapTextConfig

    emb = "text_model.embeddings."
    if emb + "word_embeddings.weight" not in converted:
        return None
    words = converted[emb + "word_embeddings.weight"]
    layers = {
        int(m.group(1)) for k in converted if (m := re.match(r"text_model\.encoder\.layer\.(\d+)\.", k))
    }
    return ClapTextConfig(
        vocab_size=int(words.shape[0]),
        hidden_size=int(words.shape[1]),
        num_hidden_layers=len(layers),
        intermediate_size=int(converted["text_model.encoder.layer.0.intermediate.dense.weight"].shape[0]),
        max_position_embeddings=int(converted[emb + "position_embeddings.weight"].shape[0]),
        type_vocab_size=int(converted[emb + "token_type_embeddings.weight"].shape[0]),
        projection_dim=int(converted["text_projection.linear2.weight"].shape[0]),
    )


def build_models(converted: Mapping[str, torch.Tensor], *, source: str) -> torch.nn.Module:
    """Transformers-named tensors -> a strictly loaded float32 ``ClapModel`` (with text tower) or
    ``ClapAudioModelWithProjection`` (audio only)."""
    from transformers import ClapConfig, ClapModel

    audio_config = infer_audio_config(converted)
    text_config = infer_text_config(converted)
    if text_config is None:
        from transformers import ClapAudioModelWithProjection

        model: torch.nn.Module = ClapAudioModelWithProjection(audio_config)
        tensors = {k: v for k, v in converted.items() if k.startswith(("audio_model.", "audio_projection."))}
    else:
        config = ClapConfig(
            text_config=text_config.to_dict(),
            audio_config=audio_config.to_dict(),
            projection_dim=audio_config.projection_dim,
        )
        model = ClapModel(config)
        tensors = dict(converted)
    expected = set(model.state_dict())
    absent = {k for k in converted if k in OPTIONAL_KEYS and k not in expected}
    tensors = {k: v for k, v in tensors.items() if k not in absent}
    _load_strict(model, tensors, extra=set(converted) - set(tensors) - absent, source=source)
    return model.float().eval()


def load_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> tuple[torch.nn.Module, list[str]]:
    """A LAION ``.pt`` / AudioLDM ``.ckpt`` -> (transformers CLAP model, dropped original keys)."""
    path = Path(path)
    clap = extract_clap_state_dict(read_checkpoint(path, allow_pickle=allow_pickle), source=str(path))
    converted, dropped = convert_state_dict(clap)
    return build_models(converted, source=str(path)), dropped


def load_checkpoint_audio_model(path: str | Path) -> ClapAudioModelWithProjection:
    """The audio tower (``ClapAudioModelWithProjection``, float32, eval) of a LAION / AudioLDM checkpoint."""
    model, _ = load_checkpoint(path)
    return audio_tower_of(model)


def audio_tower_of(model: torch.nn.Module) -> ClapAudioModelWithProjection:
    """``ClapModel`` -> a ``ClapAudioModelWithProjection`` sharing its audio tensors (audio models as is)."""
    from transformers import ClapAudioModelWithProjection, ClapModel

    if not isinstance(model, ClapModel):
        return model  # type: ignore[return-value]
    audio = ClapAudioModelWithProjection(model.config.audio_config)
    audio.audio_model = model.audio_model
    audio.audio_projection = model.audio_projection
    return audio.float().eval()


def load_text_tower(source: str) -> tuple[torch.nn.Module, Any]:
    """(``ClapTextModelWithProjection``, tokenizer) of a CLAP source; CheckpointError when it has none."""
    from transformers import ClapModel, ClapTextModelWithProjection

    path = Path(source)
    if source == "scratch" or path.is_file():
        if path.is_file():
            model, _ = load_checkpoint(path)
            if isinstance(model, ClapModel):
                raise CheckpointError(
                    f"{source}: has a text tower but no tokenizer; run `qvimclap convert-clap` on it, copy "
                    "the RoBERTa tokenizer files (vocab.json, merges.txt) of roberta-base into the folder"
                )
        raise CheckpointError(
            f"CLAP source {source!r} has no text tower; embed_text needs a full CLAP folder"
        )
    config = _read_config(path) if path.is_dir() else {"model_type": "clap"}
    if config.get("model_type") != "clap":
        raise CheckpointError(
            f"{source}: holds only CLAP's audio tower (model_type {config.get('model_type')!r})"
        )
    try:
        from transformers import AutoTokenizer

        from qvimclap.models.clap import quiet_transformers

        with quiet_transformers():  # the audio tensors of a full folder are "unexpected" here: expected
            text_model = ClapTextModelWithProjection.from_pretrained(source, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise CheckpointError(f"{source}: cannot load CLAP's text tower or tokenizer ({first})") from None
    # transformers builds an EMPTY tokenizer (special tokens only) from a config alone: refuse it, or every
    # text would silently become <unk>
    has_files = not path.is_dir() or any((path / n).is_file() for n in ("tokenizer.json", "vocab.json"))
    if not has_files or len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
        raise CheckpointError(
            f"{source}: has a text tower but no tokenizer files (tokenizer.json or vocab.json + merges.txt); "
            "copy "
            "those of roberta-base (AudioLDM's and LAION's CLAP tokenizer) into the folder"
        )
    return text_model.float().eval(), tokenizer


def convert_clap_checkpoint(
    src: str | Path, out_dir: str | Path, *, force: bool = False, allow_pickle: bool = False
) -> Path:
    """Write a LAION ``.pt`` / AudioLDM ``.ckpt`` as a transformers CLAP folder.

    The folder holds ``config.json`` + ``model.safetensors`` (a ``ClapModel`` when the checkpoint has a text
    tower, else a ``ClapAudioModelWithProjection``), ``preprocessor_config.json`` (the feature-extractor
    settings) and ``conversion.json`` (source and dropped keys). Written to a temporary folder, then renamed;
    an existing ``out_dir`` is replaced only with ``force``.
    """
    from qvimclap.models.clap import make_feature_extractor

    src, out_dir = Path(src), Path(out_dir)
    if out_dir.exists() and not force:
        raise CheckpointError(f"{out_dir}: already exists; pass --force to overwrite it")
    model, dropped = load_checkpoint(src, allow_pickle=allow_pickle)
    # A hidden sibling with the umask's mode (a model folder is shared), locked while written.
    with locked_temp_dir(out_dir) as tmp:
        from qvimclap.models.clap import quiet_transformers

        with quiet_transformers():
            model.save_pretrained(tmp, safe_serialization=True)
        make_feature_extractor().save_pretrained(tmp)
        report = {"source": str(src), "architecture": type(model).__name__, "dropped_keys": sorted(dropped)}
        (tmp / "conversion.json").write_text(json.dumps(report, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir) if out_dir.is_dir() else out_dir.unlink()
        tmp.rename(out_dir)
    logger.info("converted %s -> %s (%s, %d keys dropped)", src, out_dir, type(model).__name__, len(dropped))
    return out_dir


def _layer_shapes(converted: Mapping[str, torch.Tensor], enc: str) -> tuple[list[int], list[int]]:
    """Blocks per stage and attention heads per stage (columns of each stage's relative-position table)."""
    blocks: dict[int, set[int]] = {}
    for key in converted:
        if m := re.match(re.escape(enc) + r"layers\.(\d+)\.blocks\.(\d+)\.", key):
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not blocks or sorted(blocks) != list(range(len(blocks))):
        raise CheckpointError(
            "CLAP audio tower: its stages (layers.N.blocks.M) are missing or not numbered 0..N"
        )
    depths = [len(blocks[i]) for i in range(len(blocks))]
    table = "layers.{}.blocks.0.attention.self.relative_position_bias_table"
    heads = [int(converted[enc + table.format(i)].shape[1]) for i in range(len(depths))]
    return depths, heads


def _load_strict(
    model: torch.nn.Module, tensors: Mapping[str, torch.Tensor], *, extra: set[str], source: str
) -> None:
    expected = model.state_dict()
    missing = sorted(
        k
        for k in expected
        if k not in tensors and not k.endswith("num_batches_tracked") and k not in OPTIONAL_KEYS
    )
    unexpected = sorted((set(tensors) - set(expected)) | extra)
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: CLAP conversion mismatch: {len(missing)} missing tensors ({', '.join(missing[:4])}) "
            f"and {len(unexpected)} unexpected ({', '.join(unexpected[:4])}); is this a LAION/AudioLDM CLAP "
            "checkpoint?"
        )
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{source}: tensor {key!r} has shape {list(value.shape)}, the inferred architecture expects "
                f"{list(expected[key].shape)}"
            )
    state = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    model.load_state_dict(state, strict=False)  # strictness checked above, with num_batches_tracked optional


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"
