"""Fingerprints: stable hashes of weights and settings; differences named key by key."""

import torch

from qvimclap.fingerprint import fingerprint_differences, fingerprint_id, state_dict_sha256


def test_state_dict_hash_changes_with_any_weight_and_not_with_key_order():
    a = {"w": torch.ones(2, 3), "b": torch.zeros(3)}
    b = {"b": torch.zeros(3), "w": torch.ones(2, 3)}
    assert state_dict_sha256(a) == state_dict_sha256(b)
    c = {"w": torch.ones(2, 3), "b": torch.tensor([0.0, 0.0, 1e-6])}
    assert state_dict_sha256(a) != state_dict_sha256(c)
    assert len(state_dict_sha256(a)) == 64


def test_fingerprint_id_ignores_version_but_not_preprocessing():
    fp = {"encoder": "qvim", "dim": 512, "preprocessing": {"sr": 32000}, "qvimclap_version": "0.1.0"}
    assert fingerprint_id(fp) == fingerprint_id({**fp, "qvimclap_version": "9.9"})
    assert fingerprint_id(fp) != fingerprint_id({**fp, "preprocessing": {"sr": 16000}})


def test_fingerprint_differences_names_each_key():
    a = {"encoder": "clap", "dim": 512, "preprocessing": {"sr": 16000}}
    b = {"encoder": "clap", "dim": 768, "preprocessing": {"sr": 48000}}
    diffs = fingerprint_differences(a, b)
    assert diffs == ["dim: expected 512, got 768", 'preprocessing: expected {"sr": 16000}, got {"sr": 48000}']
    assert fingerprint_differences(a, dict(a)) == []
