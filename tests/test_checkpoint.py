"""Checkpoints: exact round trip of nested state, atomic writes, clear errors for bad files."""
from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from minildm.engine import checkpoint as ckpt
from minildm.engine.checkpoint import (
    flatten_state,
    load_checkpoint,
    load_module_state,
    load_weights,
    save_checkpoint,
    save_weights,
    unflatten_state,
)


def _trained_adam():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.Adam([{"params": model[0].parameters(), "lr": 1e-3},
                            {"params": model[2].parameters(), "lr": 5e-4}], betas=(0.5, 0.9))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
    return model, opt


def _assert_same(a, b, path="root"):
    if isinstance(a, dict):  # an OrderedDict state_dict comes back as a plain (ordered) dict
        assert isinstance(b, dict), path
    else:
        assert type(a) is type(b), f"{path}: {type(a)} vs {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}/{i}")
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), path
    else:
        assert a == b, path


def test_nested_state_round_trip_is_exact(tmp_path):
    model, opt = _trained_adam()
    random.seed(3)
    np.random.seed(4)
    state = {
        "step": 7,
        "lr": 0.1,
        "whole_float": 2.0,
        "flags": (True, False, None),
        "name": "run",
        "nested": {"list": [1, 2.5, "x", [3, (4, 5)]], 3: "int key", "nan": float("nan")},
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state(),
        "python_rng": random.getstate(),
        "half": torch.arange(6, dtype=torch.float16).reshape(2, 3),
        "empty": torch.zeros(0, 3),
        "bools": torch.tensor([True, False]),
    }
    path = save_checkpoint(tmp_path / "c.safetensors", state, {"config": {"lr": 0.1}, "note": "hi"})
    loaded, meta = load_checkpoint(path)
    _assert_same(state["opt"], loaded["opt"])
    for key in state:
        if key not in ("numpy_rng",):
            _assert_same(state[key], loaded[key], key)
    name, keys, pos, has_gauss, cached = loaded["numpy_rng"]
    assert name == "MT19937" and pos == state["numpy_rng"][2] and keys.dtype == np.uint32
    assert np.array_equal(keys, state["numpy_rng"][1])
    assert meta["config"] == {"lr": 0.1} and meta["note"] == "hi"
    assert isinstance(loaded["step"], int) and isinstance(loaded["whole_float"], float)
    assert loaded["opt"]["param_groups"][0]["betas"] == (0.5, 0.9)
    assert isinstance(loaded["opt"]["param_groups"][0]["betas"], tuple)
    assert list(loaded["opt"]["state"].keys()) == [0, 1, 2, 3]

    # restored RNG states reproduce the same draws
    np.random.set_state(loaded["numpy_rng"])
    a = np.random.rand(3)
    np.random.set_state(state["numpy_rng"])
    assert np.array_equal(a, np.random.rand(3))
    torch.set_rng_state(loaded["rng"])
    b = torch.rand(3)
    torch.set_rng_state(state["rng"])
    assert torch.equal(b, torch.rand(3))

    # the optimizer state loads into a fresh optimizer and continues identically
    model2 = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    model2.load_state_dict(loaded["model"])
    opt2 = torch.optim.Adam([{"params": model2[0].parameters(), "lr": 1e-3},
                             {"params": model2[2].parameters(), "lr": 5e-4}], betas=(0.5, 0.9))
    opt2.load_state_dict(loaded["opt"])
    x = torch.randn(5, 4)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_shared_and_view_tensors_are_stored_separately(tmp_path):
    w = torch.randn(4, 4)
    state = {"a": w, "b": w, "row": w[1], "t": w.t()}
    tensors, structure = flatten_state(state)
    assert len(tensors) == 4
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "s.safetensors", state))
    for k in state:
        assert torch.equal(loaded[k], state[k])
    assert unflatten_state(tensors, structure)["row"].shape == (4,)


def test_unsupported_leaf_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="object"):
        save_checkpoint(tmp_path / "x.safetensors", {"bad": object()})
    assert not list(tmp_path.iterdir())


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"x": torch.ones(3), "step": 1})
    before = path.read_bytes()

    def boom(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ckpt.os, "fsync", boom)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, {"x": torch.zeros(1000), "step": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]
    state, _ = load_checkpoint(path)
    assert state["step"] == 1


def test_missing_truncated_corrupt_and_foreign_files_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.safetensors")

    path = save_checkpoint(tmp_path / "c.safetensors", {"x": torch.randn(100), "step": 3})
    data = path.read_bytes()

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[:-50])
    with pytest.raises(ValueError, match="truncated.safetensors"):
        load_checkpoint(truncated)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file at all" * 3)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_checkpoint(garbage)

    header_len = int.from_bytes(data[:8], "little")
    broken = bytearray(data)
    broken[8:8 + header_len] = b"{" * header_len  # corrupted JSON header
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(bytes(broken))
    with pytest.raises(ValueError, match="corrupt.safetensors"):
        load_checkpoint(corrupt)

    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.ones(2)}, str(foreign))
    with pytest.raises(ValueError, match="not a minildm checkpoint"):
        load_checkpoint(foreign)

    no_structure = tmp_path / "nostructure.safetensors"
    save_file({"x": torch.ones(2)}, str(no_structure),
              metadata={"format": "minildm.engine.checkpoint", "format_version": ckpt.FORMAT_VERSION})
    with pytest.raises(ValueError, match="no 'structure'"):
        load_checkpoint(no_structure)

    old = tmp_path / "old.safetensors"
    save_file({"x": torch.ones(2)}, str(old), metadata={"format": "minildm.engine.checkpoint", "format_version": "0",
                                                        "structure": json.dumps({"t": "dict", "items": []})})
    with pytest.raises(ValueError, match="format version '0'"):
        load_checkpoint(old)

    # weights files and checkpoints are not interchangeable
    with pytest.raises(ValueError, match="not a minildm weights"):
        load_weights(path)


def test_load_module_state_lists_mismatches():
    small = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    other = nn.Sequential(nn.Linear(4, 16), nn.Linear(16, 2), nn.Linear(2, 2))
    with pytest.raises(ValueError) as err:
        load_module_state(small, other.state_dict(), source="x.safetensors")
    msg = str(err.value)
    assert "mismatched checkpoint from 'x.safetensors'" in msg
    assert "unexpected keys: 2.weight, 2.bias" in msg
    assert "0.weight: checkpoint (16, 4) vs model (8, 4)" in msg
    partial = {k: v for k, v in small.state_dict().items() if k != "1.bias"}
    with pytest.raises(ValueError, match=r"missing keys: 1\.bias"):
        load_module_state(small, partial)
    load_module_state(small, partial, strict=False)  # allowed when not strict
    target = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    load_module_state(target, small.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), small.parameters()))


def test_weights_round_trip_with_config(tmp_path):
    model = nn.Conv2d(3, 4, 3)
    cfg = {"ch": 4, "ch_mult": [1, 2], "name": "x"}
    path = save_weights(tmp_path / "w" / "model.safetensors", model, cfg)
    state, config = load_weights(path)
    assert config == cfg
    fresh = nn.Conv2d(3, 4, 3)
    load_module_state(fresh, state)
    assert torch.equal(fresh.weight, model.weight)
    assert not [p for p in os.listdir(path.parent) if p.endswith(".tmp")]


def test_written_files_follow_the_umask(tmp_path):
    # tempfile makes 0600 files: a cache shared by a group or a CI cache would be unreadable to the others
    import stat

    from minildm.engine.checkpoint import atomic_write_bytes

    old = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "w.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
