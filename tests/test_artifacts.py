"""Artifact cache: train once then load, config checks, corrupted files, atomic writes, recipes."""
from __future__ import annotations

import json

import pytest
import torch

from minildm.recipes import store as artifacts
from minildm.recipes.autoencoder import (
    AutoencoderSpec,
    autoencoder_recipe,
    build_autoencoder,
)
from minildm.recipes.presets import get_preset
from minildm.recipes.registry import ARTIFACTS, TrainResult, list_artifacts
from minildm.recipes.store import artifact_dir, load_or_train

SMOKE2 = get_preset("smoke").with_ae(steps=2)


@pytest.fixture()
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINILDM_ARTIFACTS", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny artifact (ae-kl-l2, 2 steps) shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("shared")
    art = load_or_train("ae-kl-l2", SMOKE2, device="cpu", progress=False, root=root)
    return root, art


def test_names_and_registry():
    names = list_artifacts()
    for name in ("ae-kl-l2", "ae-kl-l1-lpips", "ae-kl-l1-lpips-gan", "ae-vq-l1-lpips-gan"):
        assert name in names
    assert names == sorted(ARTIFACTS)
    with pytest.raises(ValueError, match="unknown artifact 'ae-nope'.*ae-kl-l2"):
        load_or_train("ae-nope", "smoke")
    with pytest.raises(ValueError, match="unknown preset"):
        artifact_dir("ae-kl-l2", "huge")


def test_recipes_follow_the_variants():
    p = get_preset("smoke")
    l2 = autoencoder_recipe("l2", "kl", p)
    assert l2["pixel_loss"] == "l2" and l2["perceptual_weight"] == 0 and l2["disc_weight"] == 0
    assert l2["kl_weight"] == 1e-6 and l2["steps"] == p.ae.steps and l2["lr"] == p.ae.lr
    gan = autoencoder_recipe("l1-lpips-gan", "vq", p, steps=3)
    assert gan["pixel_loss"] == "l1" and gan["perceptual_weight"] == 1.0 and gan["disc_weight"] > 0
    assert gan["disc_start"] == p.ae.disc_start and gan["beta"] == 0.25 and gan["steps"] == 3
    with pytest.raises(ValueError, match="variant.*l1-lpips-gan"):
        autoencoder_recipe("l3", "kl", p)
    with pytest.raises(ValueError, match="regularizer.*kl, vq"):
        autoencoder_recipe("l2", "gauss", p)
    with pytest.raises(ValueError, match="steps"):
        autoencoder_recipe("l2", "kl", p, steps=0)

    model, loss = build_autoencoder("l2", "kl", p)
    cfg = model.config
    assert type(model).__name__ == "AutoencoderKL" and cfg.resolution == p.ae.image_size
    assert cfg.ch == p.ae.ch and tuple(cfg.ch_mult) == tuple(p.ae.ch_mult) and cfg.embed_dim == p.ae.z_channels
    assert not loss.use_discriminator and loss.perceptual_loss is None
    again, _ = build_autoencoder("l2", "kl", p)  # seeded: the same initial weights every time
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    vq, vq_loss = build_autoencoder("l1-lpips-gan", "vq", p)
    assert type(vq).__name__ == "VQModel" and vq.config.n_embed == p.ae.n_embed
    assert vq_loss.use_discriminator and vq_loss.discriminator_iter_start == p.ae.disc_start


def test_load_or_train_round_trip(trained, monkeypatch):
    root, art = trained
    path = root / "smoke" / "ae-kl-l2"
    assert art.path == path
    assert sorted(p.name for p in root.joinpath("smoke").iterdir()) == ["ae-kl-l2"]  # no temp/partial left
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "log.json", "metrics.json", "model.safetensors"]
    assert not art.model.training
    m = art.metrics
    assert {"psnr", "ssim", "lpips", "train_time_s", "params", "command"} <= set(m)
    assert m["command"] == "python -m minildm train-ae --preset smoke --variant l2 --regularizer kl --steps 2"
    assert m["n"] == SMOKE2.ae.n_eval and m["params"] == sum(p.numel() for p in art.model.parameters())
    assert 0 < m["psnr"] < 60 and -1 <= m["ssim"] <= 1 and m["lpips"] >= 0
    assert [r["step"] for r in art.log] == [0, 1]
    config = json.loads((path / "config.json").read_text())
    assert config["preset"] == "smoke" and config["recipe"]["variant"] == "l2"
    assert config["model"]["resolution"] == SMOKE2.ae.image_size

    # the second call loads and does not train
    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of loading")

    monkeypatch.setattr(AutoencoderSpec, "train", no_training)
    again = load_or_train("ae-kl-l2", SMOKE2, device="cpu", progress=False, root=root)
    assert again.metrics == art.metrics and again.log == art.log
    for a, b in zip(art.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(art.model.encode_latent(x), again.model.encode_latent(x))


def test_config_mismatch_is_a_clear_error(trained):
    root, _ = trained
    with pytest.raises(ValueError) as err:
        load_or_train("ae-kl-l2", SMOKE2.with_ae(steps=3, ch=8), progress=False, root=root)
    msg = str(err.value)
    assert "mismatched artifact" in msg and "config.json" in msg and "recipe.steps" in msg
    assert "model.ch: saved 16, expected 8" in msg
    assert "with_ae(ch=8, steps=3), retrain=True)" in msg  # the Python call that rebuilds it
    with pytest.raises(ValueError, match="recipe.steps: saved 2, expected 3.*--steps 3`"):
        load_or_train("ae-kl-l2", SMOKE2.with_ae(steps=3), progress=False, root=root)


def test_corrupted_weights_name_the_rebuild_command(tmp_path, trained):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(trained[0], root)
    weights = root / "smoke" / "ae-kl-l2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ValueError) as err:
        load_or_train("ae-kl-l2", SMOKE2, progress=False, root=root)
    msg = str(err.value)
    assert "model.safetensors" in msg and "retrain=True" in msg
    assert "`python -m minildm train-ae --preset smoke --variant l2 --regularizer kl --steps 2`" in msg
    (root / "smoke" / "ae-kl-l2" / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="metrics.json.*corrupted"):
        load_or_train("ae-kl-l2", SMOKE2, progress=False, root=root)


def test_retrain_replaces_and_failed_build_keeps_old(trained, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(trained[0], root)
    path = root / "smoke" / "ae-kl-l2"
    before = (path / "model.safetensors").read_bytes()

    def failing_eval(self, model, preset, device):
        raise RuntimeError("evaluation crashed (simulated)")

    monkeypatch.setattr(AutoencoderSpec, "evaluate", failing_eval)
    with pytest.raises(RuntimeError, match="simulated"):
        load_or_train("ae-kl-l2", SMOKE2, device="cpu", progress=False, retrain=True, root=root)
    assert (path / "model.safetensors").read_bytes() == before  # the old artifact is intact
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    # the interrupted run left its checkpoint; the next build resumes from it instead of retraining
    assert (path.parent / "ae-kl-l2.partial" / "checkpoint.safetensors").is_file()
    monkeypatch.undo()
    calls = []
    from minildm.engine.trainer import Trainer

    original_fit = Trainer.fit

    def counting_fit(self, steps=None):
        calls.append(self.step)
        return original_fit(self, steps)

    monkeypatch.setattr(Trainer, "fit", counting_fit)
    art = artifacts.build_artifact("ae-kl-l2", SMOKE2, device="cpu", progress=False, resume=True, root=root)
    assert calls == [2]  # resumed at the end of the run: no step was repeated
    assert not (path.parent / "ae-kl-l2.partial").exists()
    assert art.metrics["steps"] == 2 and [r["step"] for r in art.log] == [0, 1]


def test_train_autoencoder_resumes_exactly(tmp_path):
    """The shared recipe: 3 steps straight == 2 steps, interruption, resume to 3 (VQ, real data)."""
    from minildm.recipes.autoencoder import train_autoencoder

    p = get_preset("smoke")
    model, loss, log = train_autoencoder("l2", "vq", p, steps=3, device="cpu", progress=False)
    assert not model.training and [r["step"] for r in log] == [0, 1, 2]
    assert {"train/perplexity", "train/codebook_usage", "loss/ae"} <= set(log[-1])
    train_autoencoder("l2", "vq", p, steps=2, device="cpu", out_dir=tmp_path, progress=False)
    assert (tmp_path / "checkpoint.safetensors").is_file()
    resumed, _, log2 = train_autoencoder("l2", "vq", p, steps=3, device="cpu", out_dir=tmp_path, resume=True,
                                         progress=False)
    def losses(rows):  # wall-clock entries differ between runs; every loss must match exactly
        return [{k: v for k, v in r.items() if k != "time_s"} for r in rows]

    assert losses(log2) == losses(log)
    for a, b in zip(model.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="different config"):  # another recipe cannot resume this run
        train_autoencoder("l2", "kl", p, steps=3, device="cpu", out_dir=tmp_path, resume=True, progress=False)


def test_reevaluate_rewrites_metrics_and_keeps_training_facts(tmp_path, trained, monkeypatch):
    import shutil

    from minildm.recipes.store import reevaluate_artifact

    root = tmp_path / "copy"
    shutil.copytree(trained[0], root)
    path = root / "smoke" / "ae-kl-l2"
    before = json.loads((path / "metrics.json").read_text())
    weights = (path / "model.safetensors").read_bytes()
    # the evaluation sees the preset given now: a different number of validation images
    preset = SMOKE2.with_ae(n_eval=4)
    art = reevaluate_artifact("ae-kl-l2", preset, device="cpu", root=root)
    after = json.loads((path / "metrics.json").read_text())
    assert after == art.metrics and after["n"] == 4 != before["n"]
    for k in ("train_time_s", "params", "steps", "command"):
        assert after[k] == before[k]
    assert after["evaluated_by"] == "python -m minildm reevaluate ae-kl-l2 --preset smoke"
    assert (path / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "log.json", "metrics.json", "model.safetensors"]

    # an evaluation that fails leaves the old metrics in place
    def broken(*args, **kwargs):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(AutoencoderSpec, "evaluate", broken)
    with pytest.raises(RuntimeError):
        reevaluate_artifact("ae-kl-l2", preset, device="cpu", root=root)
    assert json.loads((path / "metrics.json").read_text()) == after
    with pytest.raises(ValueError, match="not found"):
        reevaluate_artifact("ae-kl-l2", preset, device="cpu", root=tmp_path / "empty")


def test_non_finite_weights_are_never_published_nor_loaded(tmp_path, trained, monkeypatch):
    import shutil

    from safetensors.torch import load_file, save_file

    # a build whose training diverged saves nothing (and evaluates nothing)
    spec = ARTIFACTS["ae-kl-l2"]
    good = trained[1]

    def diverged(*args, **kwargs):
        model = type(good.model)(good.model.config)
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
        return TrainResult(model, [], 0.0)

    monkeypatch.setattr(type(spec), "train", lambda self, *a, **k: diverged())
    with pytest.raises(FloatingPointError, match="non-finite weights"):
        artifacts.build_artifact("ae-kl-l2", SMOKE2, progress=False, root=tmp_path / "new")
    assert not artifact_dir("ae-kl-l2", SMOKE2, tmp_path / "new").exists()
    monkeypatch.undo()
    # an artifact whose weights hold NaN is refused on load, naming the file
    root = tmp_path / "copy"
    shutil.copytree(trained[0], root)
    weights = root / "smoke" / "ae-kl-l2" / "model.safetensors"
    tensors = load_file(str(weights))
    name = next(iter(tensors))
    tensors[name] = torch.full_like(tensors[name], float("inf"))
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        metadata = f.metadata()
    save_file(tensors, str(weights), metadata=metadata)
    with pytest.raises(ValueError, match="non-finite weights.*model.safetensors|model.safetensors.*non-finite"):
        load_or_train("ae-kl-l2", SMOKE2, progress=False, root=root)


@pytest.mark.parametrize("file, content, message", [
    ("config.json", "[]", "holds a list"),
    ("metrics.json", "{}", "lacks 'command'"),
    ("log.json", "{}", "holds a dict"),
])
def test_artifact_files_of_the_wrong_shape_are_clear_errors(tmp_path, trained, file, content, message):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(trained[0], root)
    (root / "smoke" / "ae-kl-l2" / file).write_text(content)
    with pytest.raises(ValueError, match=f"{file}.*corrupted.*{message}.*Rebuild it with"):
        load_or_train("ae-kl-l2", SMOKE2, progress=False, root=root)


def _concurrent_build(root: str, out: str, first: bool, holding, waiting, threads: int) -> None:
    """One of the two processes of the test below: load_or_train ae-kl-l2 (smoke, 2 steps) into ``root``
    and write to ``out`` whether this process trained and the artifact's recorded training time. The first
    process, once training (i.e. inside the build), tells the second to start and waits until it has."""
    import os
    import time
    from pathlib import Path

    torch.set_num_threads(threads)  # as the reference run in this process (the sums' order depends on it)
    trained: list[int] = []
    original = AutoencoderSpec.train

    def train(self, *args, **kwargs):
        trained.append(os.getpid())
        if first:
            holding.set()
            waiting.wait(60)
            time.sleep(0.5)  # the second process is now at the artifact (its check of the cache came first)
        return original(self, *args, **kwargs)

    AutoencoderSpec.train = train
    if not first:
        holding.wait(60)
        waiting.set()
    art = load_or_train("ae-kl-l2", SMOKE2, device="cpu", progress=False, root=root)
    Path(out).write_text(json.dumps({"trained": bool(trained), "train_time_s": art.metrics["train_time_s"],
                                     "pid": os.getpid()}))


def test_two_processes_building_one_artifact(trained, tmp_path, capfd):
    """Two real processes build the same artifact into one root at (nearly) the same time: the second
    waits for the first and then loads its artifact; the weights are those of a single run."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    root = tmp_path / "cache"
    holding, waiting = ctx.Event(), ctx.Event()
    outs = [tmp_path / "first.json", tmp_path / "second.json"]
    procs = [ctx.Process(target=_concurrent_build, args=(str(root), str(out), i == 0, holding, waiting,
                                                               torch.get_num_threads()))
             for i, out in enumerate(outs)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0, 0]
    first, second = (json.loads(out.read_text()) for out in outs)
    assert first["trained"] and not second["trained"]  # the second loaded the first's artifact
    assert second["train_time_s"] == first["train_time_s"]
    err = capfd.readouterr().err
    assert f"held by process {first['pid']}" in err and "waiting" in err
    art = artifacts.load_artifact("ae-kl-l2", SMOKE2, device="cpu", root=root)
    single = trained[1].model.state_dict()
    for k, v in art.model.state_dict().items():
        assert torch.equal(v, single[k]), k
    assert sorted(p.name for p in (root / "smoke").iterdir()) == ["ae-kl-l2"]  # no partial, temp or lock left


def test_build_removes_leftovers_of_a_crashed_build_and_reuses(trained, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(trained[0], root)
    smoke = root / "smoke"
    leftovers = [smoke / ".ae-kl-l2.k3j_x9q.tmp", smoke / ".ae-kl-l2.old"]
    others = [smoke / ".ae-kl-l2x.old", smoke / ".ae-kl-l2x.abc.tmp"]  # another artifact's: kept
    for d in leftovers + others:
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"half written")

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of loading")

    monkeypatch.setattr(AutoencoderSpec, "train", no_training)
    art = artifacts.build_artifact("ae-kl-l2", SMOKE2, device="cpu", progress=False, root=root, reuse=True)
    assert art.metrics == trained[1].metrics
    assert not any(d.exists() for d in leftovers) and all(d.is_dir() for d in others)
    assert not (smoke / ".ae-kl-l2.lock").exists()


def test_no_progress_reaches_the_dependencies_and_files_follow_the_umask(tmp_path, capfd):
    # kl-f4 trains the checker on the way (for its evaluation): with progress=False, no bar at all; the
    # artifact folders and files get the umask's modes (mkdtemp / mkstemp alone make them 0700 / 0600)
    import os
    import stat

    old = os.umask(0o022)
    try:
        art = artifacts.build_artifact("kl-f4", "smoke", steps=2, device="cpu", progress=False, root=tmp_path)
    finally:
        os.umask(old)
    err = capfd.readouterr().err
    assert "checker (smoke)" not in err and "kl-f4 (smoke)" not in err, err[-500:]
    assert stat.S_IMODE(art.path.stat().st_mode) == 0o755
    assert stat.S_IMODE((art.path / "model.safetensors").stat().st_mode) == 0o644
