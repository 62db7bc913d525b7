"""One-line errors that name the file, nothing left behind, outputs like any tool's (issue 12, items 6-13).

Helpers from ``_faults``: a numpy TinyEmbedder as ``clap:tiny``, short tone clips, tmpfs disks (skipped with
the reason where mounting is not allowed).
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
from _faults import ENCODER, SAMPLE_RATE, run, tiny_embedders, tmpfs, write_clips
from _tiny_audioldm import TinyEmbedder, save_tiny_audioldm

from qvimclap import api
from qvimclap.cli import generate as cli_generate
from qvimclap.cli._app import USER_ERROR_EXIT
from qvimclap.errors import AudioError, StoreError, printable
from qvimclap.files import atomic_path, temp_name
from qvimclap.index import VectorIndex
from qvimclap.models.clap import prepare_audioldm_waveform


@pytest.fixture(autouse=True)
def _tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_embedders(monkeypatch)


@pytest.fixture
def sounds(tmp_path: Path) -> Path:
    folder = tmp_path / "sounds"
    write_clips(folder, [220.0, 330.0, 440.0, 550.0])
    return folder


@pytest.fixture
def store_and_index(sounds: Path, tmp_path: Path) -> tuple[Path, Path]:
    store_path, index_path = tmp_path / "s.h5", tmp_path / "s.faiss"
    assert run("embed", sounds, "-e", ENCODER, "-o", store_path, "--no-progress")[0] == 0
    assert run("index", store_path, "-o", index_path)[0] == 0
    return store_path, index_path


def one_line_error(code: int, err: str, expected: str) -> None:
    assert code == USER_ERROR_EXIT, err
    assert err.startswith("Error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err


# ---------------------------------------------------------------------- 6. messages name the file
class ClapChecked(TinyEmbedder):
    """A TinyEmbedder behind CLAP's own input check, which knows clips only as "waveform i"."""

    def embed(self, waveforms, *, batch_size: int = 16) -> np.ndarray:
        for i, wave in enumerate(waveforms):
            prepare_audioldm_waveform(wave, source=f"waveform {i}")
        return super().embed(waveforms, batch_size=batch_size)


def test_clips_a_model_rejects_are_named_by_their_file(
    sounds: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "load_embedder", lambda spec, **kw: ClapChecked())
    dc, one = sounds / "dc.wav", sounds / "one.wav"
    sf.write(dc, np.full(SAMPLE_RATE // 2, 0.5, np.float32), SAMPLE_RATE)
    sf.write(one, np.array([0.5], np.float32), SAMPLE_RATE)
    silent = "audio is silent once its mean (DC offset) is removed"

    code, out, err = run("embed", sounds, "-e", ENCODER, "-o", tmp_path / "s.h5", "--no-progress")
    assert code == 0 and "added 4, already stored 0, unusable 2" in out
    assert f"  {dc}: {silent}" in err and f"  {one}: {silent}" in err and "waveform" not in err
    assert run("index", tmp_path / "s.h5", "-o", tmp_path / "s.faiss")[0] == 0
    code, _, err = run("search", dc, "--index", tmp_path / "s.faiss")
    one_line_error(code, err, f"Error: {dc}: {silent}")

    from qvimclap.evaluation import _embed_paths  # eval-retrieval embeds queries in chunks

    with pytest.raises(AudioError, match=f"^{re.escape(f'{dc}: {silent}')}"):
        _embed_paths([sounds / "clip00.wav", dc], ClapChecked(), batch_size=8)


def test_a_damaged_store_row_is_named_when_indexing(
    store_and_index: tuple[Path, Path], tmp_path: Path
) -> None:
    store_path, _ = store_and_index
    with h5py.File(store_path, "r+") as f:  # a hand-edited or damaged store
        f["embeddings"][1, 3] = np.nan
    code, _, err = run("index", store_path, "-o", tmp_path / "n.faiss")
    one_line_error(code, err, f"{store_path}: 1 stored embedding(s) contain NaN or Inf, e.g. id 'clip01.wav'")


# ------------------------------------------------------------- 7. one-line errors instead of tracebacks
def test_damaged_index_files(store_and_index: tuple[Path, Path], sounds: Path, tmp_path: Path) -> None:
    from qvimclap.index import MAGIC, TRAILER_MAGIC

    _, index_path = store_and_index
    good = index_path.read_bytes()  # version 2: payload | header | header length | magic
    (header_len,) = struct.unpack("<Q", good[-16:-8])
    payload = good[: -16 - header_len]
    keyless = b'{"kind": "flat"}'
    cases = {
        "short": (good[:15], "not a qvimclap index file (too short)"),
        "v1-short": (MAGIC + b"\0" * 4, "index file is truncated (12 bytes)"),
        "v1-length": (MAGIC + struct.pack("<Q", 1 << 60) + b"{}", "index header length says"),
        "length": (good[:-16] + struct.pack("<Q", 1 << 60) + TRAILER_MAGIC, "index header length says"),
        "keys": (
            payload + keyless + struct.pack("<Q", len(keyless)) + TRAILER_MAGIC,
            "index header lacks format_version, params, dim, num_vectors, fingerprint, ids, paths",
        ),
        "payload": (good[4:], "index file is truncated or corrupt"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name}.faiss"
        path.write_bytes(data)
        with pytest.raises(StoreError, match="rebuild"):
            VectorIndex.load(path)
        code, _, err = run("search", sounds / "clip00.wav", "--index", path)
        one_line_error(code, err, message)


def test_index_out_and_store_out_must_be_files(
    store_and_index: tuple[Path, Path], sounds: Path, tmp_path: Path
):
    store_path, _ = store_and_index
    folder = tmp_path / "out"
    folder.mkdir()
    for force in ([], ["--force"]):
        code, _, err = run("index", store_path, "--out", folder, *force)
        one_line_error(
            code, err, f"{folder}: is a folder; give the index a file name, e.g. {folder / 'NAME.faiss'}"
        )
    code, _, err = run("embed", sounds, "-e", ENCODER, "--out", folder)
    one_line_error(code, err, f"{folder}: is a folder; --out takes the store's file name")
    assert os.listdir(folder) == []


@pytest.mark.parametrize("num_rows", [-3, 10**9])
def test_hand_edited_row_count(store_and_index: tuple[Path, Path], tmp_path: Path, num_rows: int) -> None:
    store_path, _ = store_and_index
    with h5py.File(store_path, "r+") as f:
        f["num_rows"][0] = num_rows
    code, _, err = run("index", store_path, "-o", tmp_path / "x.faiss")
    one_line_error(
        code, err, f"{store_path}: malformed embedding store (num_rows {num_rows} for a capacity of"
    )


@pytest.fixture(scope="module")
def tiny_aligned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from qvimclap.models.aligned import AlignedModel
    from qvimclap.models.qvim import QvimEncoder

    torch.manual_seed(0)
    model = AlignedModel.from_towers(
        QvimEncoder.from_pretrained("scratch:mn01"),
        None,
        head="linear",
        clip_duration_s=0.5,
        clap_fingerprint={"encoder": "clap", "space": "clap:0123456789ab", "dim": 512},
    )
    folder = tmp_path_factory.mktemp("aligned") / "model"
    model.save_pretrained(folder)
    return folder


def test_damaged_model_folder(tiny_aligned: Path, sounds: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_aligned, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    code, _, err = run("embed", sounds, "-e", folder, "-o", tmp_path / "s.h5")
    one_line_error(code, err, f"{weights}: not a readable safetensors file")
    assert not (tmp_path / "s.h5").exists()


def test_non_finite_output_blames_the_clip_unless_the_weights_are_bad(
    tiny_aligned: Path, sounds: Path
) -> None:
    import torch

    from qvimclap.errors import CheckpointError
    from qvimclap.models.aligned import AlignedModel

    model = AlignedModel.from_pretrained(tiny_aligned)
    embedder = model.embedder("imitation")
    clean = embedder._embed_windows

    def padded_clips_overflow(windows, batch_size):  # stands for a clip the model cannot take
        vectors = clean(windows, batch_size)
        for w, v in zip(windows, vectors, strict=True):
            if not np.asarray(w)[..., -100:].any():  # zero-padded: the short clip
                v[:] = np.nan
        return vectors

    embedder._embed_windows = padded_clips_overflow
    paths = sorted(sounds.glob("*.wav"))[:3]
    t = np.arange(int(0.3 * SAMPLE_RATE)) / SAMPLE_RATE
    sf.write(paths[1], (0.5 * np.sin(2 * np.pi * 500 * t)).astype(np.float32), SAMPLE_RATE)
    x, failures = api.embed_files(paths, embedder)
    assert x.shape == (2, 512) and [f.path for f in failures] == [paths[1]]
    assert failures[0].reason == f"{paths[1]}: the model produced NaN or Inf for this clip"
    embedder._embed_windows = clean
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN or Inf weights"):
        embedder.embed([np.ones(16000, np.float32) * 0.1])


def test_full_disks_in_index_and_synth(store_and_index: tuple[Path, Path], tmp_path: Path) -> None:
    store_path, _index = store_and_index
    with tmpfs(tmp_path, "8k") as disk:
        code, _, err = run("index", store_path, "-o", disk / "s.faiss")
        one_line_error(code, err, f"{disk / 's.faiss'}: no space left on device (disk full)")
        code, _, err = run("synth", disk / "corpus", "--refs", "3", "--imitations", "1")
        one_line_error(code, err, f"{disk / 'corpus'}: no space left on device (disk full)")
        assert os.listdir(disk) == []  # neither a partial index nor the corpus's temporary folder


# ------------------------------------------------------------------------ 7 and 13: generate
@pytest.fixture(scope="module")
def ldm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_audioldm(tmp_path_factory.mktemp("ldm") / "tiny-audioldm")


@pytest.fixture
def generate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ldm_dir: Path):
    """``generate(out, *extra)`` runs `qvimclap generate` with a TinyEmbedder and the tiny AudioLDM."""
    monkeypatch.setenv("QVIMCLAP_CACHE_DIR", str(tmp_path / "cache"))
    model = TinyEmbedder()
    monkeypatch.setattr(cli_generate, "_load_embedder", lambda spec: model)
    imitation = tmp_path / "hum.wav"
    sf.write(
        imitation, (0.4 * np.sin(2 * np.pi * 330 * np.arange(12800) / SAMPLE_RATE)).astype(np.float32), 16000
    )
    fast = ["--duration", "0.5", "--steps", "2", "--candidates", "1", "--seed", "3"]
    return lambda out, *extra: run(
        "generate", imitation, "-m", "clap:tiny", "--audioldm", ldm_dir, "-o", out, *fast, *extra
    )


def test_generate_is_byte_reproducible_and_quiet(
    generate, tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    code, _, err = generate(tmp_path / "a.wav")
    assert code == 0, err
    time.sleep(1.1)  # libsndfile's PEAK chunk stamps the second the file was written
    code, _, err = generate(tmp_path / "b.wav")
    assert code == 0, err
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    assert b"PEAK" not in (tmp_path / "a.wav").read_bytes()
    printed = capfd.readouterr()  # what reached the terminal besides typer's own output
    for noise in ("accelerate", "Loading weights", "it/s]"):
        assert noise not in printed.err + printed.out + err, noise


def test_a_damaged_null_condition_cache_is_recomputed(ldm_dir: Path, tmp_path: Path) -> None:
    from qvimclap.generation import load_audioldm

    good = load_audioldm(ldm_dir, cache_dir=tmp_path).unconditional_condition()
    [cache] = tmp_path.glob("audioldm-unconditional-*.npy")
    for damage in (b"", b"garbage", cache.read_bytes()[:100], b"\x93NUMPY" + bytes(200)):
        cache.write_bytes(damage)
        again = load_audioldm(ldm_dir, cache_dir=tmp_path).unconditional_condition()
        np.testing.assert_array_equal(again, good)
        np.testing.assert_array_equal(np.load(cache), good)  # and rewritten
    cache.unlink()
    cache.mkdir()  # unreadable and unwritable: computed, not cached, no error
    np.testing.assert_array_equal(load_audioldm(ldm_dir, cache_dir=tmp_path).unconditional_condition(), good)


def test_generate_checks_the_output_folder_before_the_work(
    generate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qvimclap import generation

    load = generation.load_audioldm
    with tmpfs(tmp_path, "8k") as read_only:
        subprocess.run(["mount", "-o", "remount,ro", str(read_only)], check=True)
        monkeypatch.setattr(
            generation, "load_audioldm", lambda *a, **k: pytest.fail("loaded before checking")
        )
        code, _, err = generate(read_only / "x.wav")
        one_line_error(code, err, f"{read_only}: the file system is read-only")

    monkeypatch.setattr(generation, "load_audioldm", load)
    with tmpfs(tmp_path, "8k") as full:  # room for the check's empty file, not for the audio
        code, _, err = generate(full / "x.wav")
        assert code == USER_ERROR_EXIT and "Traceback" not in err
        last = err.splitlines()[-1]  # after qvimclap's own "denoising" progress
        assert last.startswith(f"Error: {full / 'x.wav'}: no space left on device (disk full)"), err
        assert os.listdir(full) == []


# -------------------------------------------------------------------- 8. no leftovers from synth
def test_synth_removes_what_a_killed_synth_left(tmp_path: Path) -> None:
    from qvimclap.data.synth import make_corpus

    out = tmp_path / "corpus"
    stale = temp_name(out)  # what a killed synth leaves: its hidden folder, no longer locked
    (stale / "references").mkdir(parents=True)
    live = temp_name(out)  # another synth still writing: locked
    live.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(live)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        make_corpus(out, num_references=2, imitations_per_reference=1)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["corpus", live.name])
    finally:
        holder.kill()
        holder.wait()


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("ready", flush=True)
time.sleep(60)
"""


# ---------------------------------------------------------------------------- 9. messages that mislead
def test_messages_say_what_is_wrong(sounds: Path, store_and_index: tuple[Path, Path], tmp_path: Path) -> None:
    _, index_path = store_and_index
    code, _, err = run("embed", sounds, "-e", "runs/doesnotexist", "-o", tmp_path / "x.h5")
    one_line_error(code, err, "runs/doesnotexist: no such model folder")

    rate = tmp_path / "rate.wav"  # a header claiming 2**31 - 1 Hz
    data = bytearray((sounds / "clip00.wav").read_bytes())
    at = data.find(b"fmt ") + 12
    data[at : at + 4] = struct.pack("<I", 2**31 - 1)
    rate.write_bytes(bytes(data))
    code, _, err = run("search", rate, "--index", index_path)
    one_line_error(code, err, f"{rate}: its header gives a sample rate of 2147483647 Hz")

    folder = tmp_path / "x.wav"
    folder.mkdir()
    code, _, err = run("search", folder, "--index", index_path)
    one_line_error(code, err, f"{folder}: is a folder, not an audio file")

    from qvimclap.models.clap_convert import read_checkpoint

    pickled = tmp_path / "pickled.pt"
    import torch

    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Path("x")}, pickled)
    with pytest.raises(Exception, match="convert-clap .*--allow-pickle") as caught:
        read_checkpoint(pickled)
    assert "retry with --allow-pickle" not in str(caught.value)


def test_an_unreadable_file_says_so(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user (permissions do not stop root)")
    folder = Path(tempfile_dir())
    path = write_clips(folder, [440.0])[0]
    path.chmod(0o000)
    os.seteuid(65534)  # nobody
    try:
        with pytest.raises(AudioError, match=f"^{path}: cannot be read \\(Permission denied\\)$"):
            api.embed_file(path, TinyEmbedder())
    finally:
        os.seteuid(0)


def tempfile_dir() -> str:
    import tempfile

    folder = tempfile.mkdtemp()
    os.chmod(folder, 0o755)  # nobody may enter, not read
    return folder


# ---------------------------------------------------------------------- 10. --plot needs --force
def test_eval_plot_is_not_overwritten_without_force(tmp_path: Path) -> None:
    plot = tmp_path / "ranks.png"
    plot.write_bytes(b"mine")
    code, _, err = run("eval-retrieval", "--data", tmp_path / "nodata", "-m", "x", "--plot", plot)
    one_line_error(code, err, f"{plot} already exists; pass --force")
    code, _, err = run("eval-retrieval", "--data", tmp_path / "nodata", "-m", "x", "--plot", plot, "--force")
    assert code == USER_ERROR_EXIT and "no such file or folder" in err  # got past the plot check
    assert plot.read_bytes() == b"mine"


# ------------------------------------------------------------------------------- 11. the umask
def test_outputs_respect_the_umask(store_and_index: tuple[Path, Path], tmp_path: Path) -> None:
    from qvimclap.data.synth import make_corpus

    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("{}")
        corpus = make_corpus(tmp_path / "corpus", num_references=1, imitations_per_reference=1)
        store_path, index_path = store_and_index
        os.umask(0o002)  # a group-writable setting is followed too
        with atomic_path(tmp_path / "b.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [tmp_path / "a.json", tmp_path / "b.json", corpus]}
    assert modes == {"a.json": 0o644, "b.json": 0o664, "corpus": 0o755}
    assert store_path.stat().st_mode & 0o777 == 0o644 and index_path.stat().st_mode & 0o777 == 0o644


# ------------------------------------------------------------------ 12. control characters in names
def test_file_names_cannot_forge_output_lines(tmp_path: Path) -> None:
    folder = tmp_path / "sounds"
    write_clips(folder, [220.0, 440.0])
    forged = folder / "x\nOK: every file is readable and not silent\x1b[2K.wav"
    forged.write_bytes(b"not audio")
    code, out, _ = run("data", "check", folder)
    assert code == 1
    assert not [line for line in out.splitlines() if line.startswith("OK:")]  # no forged verdict line
    assert printable(forged) in out and "\x1b" not in out
    code, out, err = run("embed", folder, "-e", ENCODER, "-o", tmp_path / "s.h5", "--no-progress")
    assert code == 0 and printable(forged) in err and "\x1b" not in err
    assert printable("a\tb\nc\x7f\u0085") == "a\\tb\\nc\\x7f\\x85"


def test_atomic_path_reports_a_full_disk_whatever_the_writer_says(tmp_path: Path) -> None:
    """torch.save (align's checkpoints) and libsndfile lose the errno: a full file system still says so."""
    import torch

    from qvimclap.errors import WriteError

    with tmpfs(tmp_path, "8k") as disk:
        target = disk / "checkpoints" / "epoch-001.pt"
        with pytest.raises(WriteError, match=f"^{re.escape(str(target))}: no space left on device"):
            with atomic_path(target) as tmp:
                torch.save({"weights": torch.zeros(64 * 1024)}, tmp)
        assert os.listdir(disk / "checkpoints") == []
