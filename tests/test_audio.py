"""Audio I/O: every format libsndfile reads, every bad input, silence, cropping, resampling, pad and crop."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from conftest import tone

from qvimclap.audio import (
    MAX_DURATION_S,
    SILENCE_PEAK_DBFS,
    audio_info,
    center_crop,
    check_mono,
    find_audio_files,
    is_silent,
    load_audio,
    pad_or_crop,
    peak_dbfs,
    prepare_waveform,
    repeat_pad,
    resample,
    write_audio,
)
from qvimclap.errors import AudioError, QvimclapError, SilentAudioError

SR = 16000

# (suffix, format, subtype, max abs error after a round trip of a 0.5-amplitude tone)
FORMATS = [
    (".wav", "WAV", "PCM_U8", 1.0 / 64),
    (".wav", "WAV", "PCM_16", 1e-4),
    (".wav", "WAV", "PCM_24", 1e-6),
    (".wav", "WAV", "PCM_32", 1e-6),
    (".wav", "WAV", "FLOAT", 0.0),
    (".wav", "WAV", "DOUBLE", 1e-7),
    (".flac", "FLAC", "PCM_16", 1e-4),
    (".flac", "FLAC", "PCM_24", 1e-6),
]


def _one_line(err: pytest.ExceptionInfo, path) -> str:
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    return message


@pytest.mark.parametrize(("suffix", "fmt", "subtype", "tol"), FORMATS)
def test_lossless_formats_round_trip(tmp_path, suffix, fmt, subtype, tol):
    x = tone(440, 0.25, SR)
    path = tmp_path / f"clip_{subtype}{suffix}"
    sf.write(str(path), x, SR, format=fmt, subtype=subtype)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1 and len(y) == len(x)
    assert np.abs(y - x).max() <= tol + 1e-9


@pytest.mark.parametrize("fmt", ["OGG", "MP3"])
def test_lossy_formats_read_as_float32_mono(tmp_path, fmt):
    if fmt not in sf.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    x = tone(440, 0.5, SR)
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(str(path), x, SR, format=fmt)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - len(x)) < 0.1 * SR  # lossy codecs may add or trim a frame
    assert np.isfinite(y).all()
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert abs(np.argmax(spectrum) * SR / len(y) - 440) < 5  # still a 440 Hz tone


def test_stereo_is_mixed_to_mono_by_averaging(tmp_path):
    left, right = tone(440, 0.2, SR, 0.5), tone(880, 0.2, SR, 0.25)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left, right], axis=1), SR, subtype="FLOAT")
    y = load_audio(path)
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-7)
    assert audio_info(path).num_channels == 2


def test_resampling_keeps_duration_and_pitch(tmp_path):
    path = tmp_path / "tone48k.wav"
    sf.write(str(path), tone(1000, 1.0, 48000), 48000, subtype="FLOAT")
    y = load_audio(path, SR)
    assert len(y) == SR and y.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert np.argmax(spectrum) == 1000  # 1 Hz bins over 1 s
    np.testing.assert_allclose(np.abs(y[2000:-2000]).max(), 0.5, atol=0.01)
    np.testing.assert_array_equal(resample(y, SR, SR), y)  # same rate: unchanged
    np.testing.assert_array_equal(
        resample(tone(500, 0.3, 44100), 44100, 22050), resample(tone(500, 0.3, 44100), 44100, 22050)
    )


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert "no such file" in _one_line(err, path)


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert "empty (0 bytes)" in _one_line(err, path)


def test_zero_sample_file(tmp_path):
    path = tmp_path / "no_samples.wav"
    sf.write(str(path), np.zeros(0, dtype=np.float32), SR)
    assert path.stat().st_size > 0  # a valid header and nothing after it
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert "no audio samples" in _one_line(err, path)


def test_corrupt_header(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(str(good), tone(440, 0.1, SR), SR)
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFX\x00\x00garbage" + good.read_bytes()[16:])
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert "not a readable audio file" in _one_line(err, path)


def test_unsupported_format(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("this is not audio\n" * 20)
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert "not a readable audio file" in _one_line(err, path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_refused(tmp_path, bad):
    x = tone(440, 0.1, SR)
    x[100:103] = bad
    path = tmp_path / "bad.wav"
    sf.write(str(path), x, SR, subtype="FLOAT")
    with pytest.raises(AudioError) as err:
        load_audio(path)
    assert "3 NaN or infinite samples" in _one_line(err, path)
    with pytest.raises(AudioError):
        write_audio(tmp_path / "out.wav", x, SR)  # never written either
    assert not (tmp_path / "out.wav").exists()


def test_errors_are_qvimclap_errors():
    assert issubclass(AudioError, QvimclapError) and issubclass(SilentAudioError, AudioError)


def test_silence_threshold(tmp_path):
    assert SILENCE_PEAK_DBFS == -60.0
    quiet = tone(440, 0.1, SR, amplitude=10 ** (-70 / 20))
    audible = tone(440, 0.1, SR, amplitude=10 ** (-50 / 20))
    assert is_silent(quiet) and not is_silent(audible) and is_silent(np.zeros(10, np.float32))
    assert peak_dbfs(np.zeros(4)) == -np.inf
    np.testing.assert_allclose(peak_dbfs(np.array([0.5, -1.0])), 0.0)

    path = tmp_path / "silent.wav"
    sf.write(str(path), np.zeros(SR // 10, dtype=np.float32), SR, subtype="FLOAT")
    with pytest.raises(SilentAudioError) as err:
        load_audio(path)
    assert "silent" in _one_line(err, path)
    y = load_audio(path, allow_silent=True)  # callers that want to skip or keep it decide
    assert len(y) == SR // 10 and not y.any()


def test_over_long_file_is_cropped_to_its_start(tmp_path):
    x = np.random.default_rng(0).uniform(-0.5, 0.5, 3 * SR).astype(np.float32)
    path = tmp_path / "long.wav"
    sf.write(str(path), x, SR, subtype="FLOAT")
    y = load_audio(path, max_duration_s=1.0)
    np.testing.assert_array_equal(y, x[:SR])
    np.testing.assert_array_equal(load_audio(path, max_duration_s=1.0), y)  # deterministic
    assert len(load_audio(path)) == 3 * SR  # under the default maximum
    assert MAX_DURATION_S == 60.0


def test_prepare_waveform_validates_arrays():
    stereo = np.stack([np.ones(10), -np.ones(10) * 0.5], axis=1)
    np.testing.assert_allclose(prepare_waveform(stereo, SR), np.full(10, 0.25))
    with pytest.raises(AudioError, match=r"shape \[T\] or \[T, C\]"):
        prepare_waveform(np.ones((2, 3, 4)), SR)
    with pytest.raises(AudioError, match="no audio samples"):
        prepare_waveform(np.zeros(0), SR)
    assert prepare_waveform(tone(440, 0.1, 32000), 32000, 16000).shape == (1600,)


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            np.zeros((2, 100), np.float32),
            r"^waveform 3: expected mono audio of shape \[T\], got shape \[2, 100\]",
        ),
        (np.zeros(0, np.float32), r"^waveform 3: contains no audio samples \(empty clip\)$"),
        (np.array([0.0, np.nan, np.inf]), r"^waveform 3: contains 2 NaN or infinite samples$"),
    ],
)
def test_check_mono_names_the_input_and_the_problem(bad, message):
    with pytest.raises(AudioError, match=message):
        check_mono(bad, "waveform 3")


def test_check_mono_returns_float32():
    x = check_mono(np.array([0.5, -0.25]), "a.wav")
    assert x.dtype == np.float32 and x.tolist() == [0.5, -0.25]


def test_pad_or_crop():
    x = np.arange(1, 6, dtype=np.float32)
    np.testing.assert_array_equal(pad_or_crop(x, 8), [1, 2, 3, 4, 5, 0, 0, 0])
    np.testing.assert_array_equal(pad_or_crop(x, 3), [1, 2, 3])
    np.testing.assert_array_equal(pad_or_crop(x, 5), x)
    batch = np.stack([x, -x])
    assert pad_or_crop(batch, 7).shape == (2, 7)


def test_repeat_pad_and_center_crop():
    x = np.arange(1, 4, dtype=np.float32)
    np.testing.assert_array_equal(repeat_pad(x, 8), [1, 2, 3, 1, 2, 3, 1, 2])
    np.testing.assert_array_equal(repeat_pad(x, 2), [1, 2])
    np.testing.assert_array_equal(repeat_pad(x, 8), repeat_pad(x, 8))
    with pytest.raises(AudioError):
        repeat_pad(np.zeros(0), 4)
    y = np.arange(10)
    np.testing.assert_array_equal(center_crop(y, 4), [3, 4, 5, 6])
    np.testing.assert_array_equal(center_crop(y, 12), y)


def test_write_audio_is_atomic_and_round_trips(tmp_path):
    x = tone(440, 0.1, SR)
    path = write_audio(tmp_path / "sub" / "out.wav", x, SR)
    np.testing.assert_array_equal(load_audio(path), x)
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.wav"]  # no temporary left behind
    assert sf.info(str(path)).subtype == "FLOAT"


def test_find_audio_files_is_sorted_and_filtered(tmp_path):
    for name in ["b.wav", "a/c.flac", "a/readme.txt", "Z.OGG"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in find_audio_files(tmp_path)] == [
        "Z.OGG",
        "a/c.flac",
        "b.wav",
    ]
