"""Trainer: deterministic batches, exact resume, NaN handling, callbacks, clipping."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from minildm.engine.batches import DatasetBatches
from minildm.engine.checkpoint import load_checkpoint
from minildm.engine.trainer import Trainer


class Items:
    """Tiny map-style dataset of dict items (what minildm.data yields)."""

    def __init__(self, n: int = 10, dim: int = 6) -> None:
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, dim, generator=g)
        self.y = self.x @ torch.randn(dim, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i], "label": i}


def _without_time(log):
    """Log rows without the wall-clock ``time_s`` (the one entry a resumed run cannot reproduce)."""
    assert all("time_s" in r for r in log)
    return [{k: v for k, v in r.items() if k != "time_s"} for r in log]


def stack(items: list[dict]) -> dict:
    return {"x": torch.stack([it["x"] for it in items]), "y": torch.stack([it["y"] for it in items]),
            "label": torch.tensor([it["label"] for it in items])}


class RegressionTask:
    """Two optimizers (like an autoencoder with a discriminator), dropout so RNG state matters."""

    optimizer_names = ("main", "aux")

    def __init__(self, seed: int = 0, nan_at: int | None = None) -> None:
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 1))
        self.aux = nn.Linear(6, 1)
        self.nan_at = nan_at

    def modules(self):
        return {"net": self.net, "aux": self.aux}

    def configure_optimizers(self):
        return {"main": torch.optim.Adam(self.net.parameters(), lr=1e-2, betas=(0.5, 0.9)),
                "aux": torch.optim.SGD(self.aux.parameters(), lr=1e-2, momentum=0.9)}

    def training_step(self, batch, step, name):
        if name == "main":
            loss = (self.net(batch["x"]) - batch["y"]).pow(2).mean()
            if self.nan_at is not None and step >= self.nan_at:
                loss = loss * float("nan")
            return loss, {"mse": loss.detach(), "noise": torch.rand(()).item()}
        loss = (self.aux(batch["x"]) - batch["y"]).abs().mean()
        return loss, {"l1": loss}


def make(tmp_path=None, seed=0, max_steps=8, **kw):
    task = RegressionTask(seed=seed, nan_at=kw.pop("nan_at", None))
    data = DatasetBatches(Items(), batch_size=4, seed=5, collate_fn=stack)
    trainer = Trainer(task, data, device="cpu", max_steps=max_steps, seed=1, progress=False,
                      out_dir=tmp_path, config={"lr": 1e-2}, **kw)
    return task, data, trainer


def params(task):
    return [p.detach().clone() for m in task.modules().values() for p in m.parameters()]


def test_dataset_batches_are_a_pure_function_of_the_step():
    ds = Items(n=10)
    a = DatasetBatches(ds, batch_size=4, seed=3, collate_fn=stack)
    b = DatasetBatches(ds, batch_size=4, seed=3, collate_fn=stack)
    # epochs are permutations: steps 0..4 with B=4 cover two epochs of 10 exactly
    seen = [i for s in range(5) for i in a.indices(s)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert seen[:10] != seen[10:]  # a fresh order per epoch
    for s in (7, 2, 0, 7):  # any order of access, same result
        assert torch.equal(a.batch(s)["x"], b.batch(s)["x"])
    assert a.indices(1) != DatasetBatches(ds, 4, seed=4, collate_fn=stack).indices(1)
    with pytest.raises(ValueError, match="map-style"):
        DatasetBatches(iter([1, 2]), 2)
    with pytest.raises(ValueError, match="batch_size"):
        DatasetBatches(ds, 0)


def test_resume_is_bit_identical(tmp_path):
    straight, _, t1 = make(max_steps=8)
    log_straight = t1.fit()
    assert [r["step"] for r in log_straight] == list(range(8))
    assert t1.step == 8

    task_a, data_a, t2 = make(tmp_path / "a", max_steps=8)
    t2.fit(3)
    path = t2.save()
    assert path == tmp_path / "a" / "checkpoint.safetensors"
    del t2, task_a
    torch.manual_seed(999)  # disturb the global RNG: resume must restore it
    torch.rand(10)
    task_b = RegressionTask(seed=42)  # different initial weights: they must be overwritten
    t3 = Trainer.from_checkpoint(path, task_b, DatasetBatches(Items(), 4, seed=5, collate_fn=stack),
                                 device="cpu", progress=False)
    assert t3.step == 3 and t3.max_steps == 8 and t3.config == {"lr": 1e-2}
    log_resumed = t3.fit()
    assert t3.step == 8
    for p, q in zip(params(straight), params(task_b)):
        assert torch.equal(p, q)
    assert _without_time(log_resumed) == _without_time(log_straight)
    # optimizer states match too
    for name in ("main", "aux"):
        s1 = t1.optimizers[name].state_dict()["state"]
        s3 = t3.optimizers[name].state_dict()["state"]
        for k in s1:
            for key, v in s1[k].items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(s3[k][key]))


def test_periodic_checkpoint_records_the_training_time_so_far(tmp_path):
    """A run killed after a periodic checkpoint resumes with the time it had spent, not zero."""
    import time

    class Slow:
        def after_step(self, trainer, record):
            time.sleep(0.02)

    _, _, t = make(tmp_path, max_steps=6, checkpoint_every=3, callbacks=[Slow()])
    saved = []
    original_save = t.save
    t.save = lambda *a, **k: saved.append(t.state_dict()["elapsed_s"]) or original_save(*a, **k)
    t.fit()
    assert saved[0] >= 3 * 0.02  # the checkpoint at step 3, written inside fit()
    assert saved[-1] >= 6 * 0.02 and t.training_time_s() == t.elapsed_s
    resumed = Trainer.from_checkpoint(tmp_path / "checkpoint.safetensors", RegressionTask(),
                                      DatasetBatches(Items(), 4, seed=5, collate_fn=stack), device="cpu",
                                      progress=False)
    assert resumed.elapsed_s == pytest.approx(saved[-1])


def test_resume_without_restoring_rng_would_differ(tmp_path):
    """Guard that the exact-resume test is sensitive: dropout depends on the RNG state."""
    straight, _, t1 = make(max_steps=4)
    t1.fit()
    task, _, t2 = make(tmp_path, max_steps=4)
    t2.fit(2)
    torch.manual_seed(12345)  # what a resume that forgets the RNG would continue with
    t2.fit(2)
    assert any(not torch.equal(p, q) for p, q in zip(params(straight), params(task)))


def test_periodic_checkpoints_and_final_save(tmp_path):
    task, _, trainer = make(tmp_path, max_steps=5, checkpoint_every=2)
    saved_steps = []
    original = trainer.save

    def spy(path=None):
        saved_steps.append(trainer.step)
        return original(path)

    trainer.save = spy
    trainer.fit()
    assert saved_steps == [2, 4, 5]
    state, meta = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert state["step"] == 5 and meta["config"] == {"lr": 1e-2} and meta["task"] == "RegressionTask"
    assert len(state["log"]) == 5 and "minildm_version" in meta
    assert set(state["optimizers"]) == {"main", "aux"}
    assert state["rng"]["torch"].dtype == torch.uint8


def test_nan_loss_raises_and_keeps_last_checkpoint(tmp_path):
    task, _, trainer = make(tmp_path, max_steps=6, checkpoint_every=2, nan_at=3)
    with pytest.raises(FloatingPointError, match=r"step 3 .*'main'.*mse=nan") as err:
        trainer.fit()
    assert "left untouched" in str(err.value)
    state, _ = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert state["step"] == 2  # the checkpoint of step 2 is still there, not overwritten
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.safetensors"]


def test_resume_refuses_other_config_and_other_model(tmp_path):
    _, _, trainer = make(tmp_path, max_steps=2)
    trainer.fit()
    path = tmp_path / "checkpoint.safetensors"
    task = RegressionTask()
    with pytest.raises(ValueError, match="different config.*lr"):
        Trainer(task, DatasetBatches(Items(), 4, collate_fn=stack), device="cpu", max_steps=4,
                progress=False, config={"lr": 0.5}).resume(path)

    class Wider(RegressionTask):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(6, 32), nn.Dropout(0.3), nn.ReLU(), nn.Linear(32, 1))

    with pytest.raises(ValueError, match="mismatched checkpoint.*shape"):
        Trainer.from_checkpoint(path, Wider(), DatasetBatches(Items(), 4, collate_fn=stack), device="cpu",
                                progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        Trainer.from_checkpoint(tmp_path / "missing.safetensors", RegressionTask(),
                                DatasetBatches(Items(), 4, collate_fn=stack), device="cpu")


def test_callbacks_clipping_and_log_every(tmp_path):
    calls = []

    class Counter:
        def __init__(self):
            self.n = 0

        def after_step(self, trainer, record):
            self.n += 1
            record["counter"] = float(self.n)

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, state):
            self.n = state["n"]

    counter = Counter()
    task, data, trainer = make(tmp_path, max_steps=5, grad_clip=1e-3, log_every=2,
                               callbacks=[counter, lambda tr, rec: calls.append(tr.step)])
    before = params(task)
    log = trainer.fit()
    assert calls == [1, 2, 3, 4, 5]
    assert [r["step"] for r in log] == [0, 2, 4]
    assert log[-1]["counter"] == 5.0
    assert {"loss/main", "loss/aux", "mse", "l1"} <= set(log[0])
    # gradient clipping to 1e-3 bounds each Adam/SGD update
    moved = max((a - b).abs().max().item() for a, b in zip(before, params(task)))
    assert moved < 0.1
    fresh = Counter()
    Trainer.from_checkpoint(tmp_path / "checkpoint.safetensors", RegressionTask(), data, device="cpu",
                            progress=False, callbacks=[fresh, lambda tr, rec: None])
    assert fresh.n == 5


def test_invalid_arguments():
    task = RegressionTask()
    data = DatasetBatches(Items(), 4, collate_fn=stack)
    with pytest.raises(ValueError, match="max_steps"):
        Trainer(task, data, device="cpu", max_steps=-1)
    with pytest.raises(ValueError, match="out_dir"):
        Trainer(task, data, device="cpu", max_steps=2, checkpoint_every=1)
    with pytest.raises(TypeError, match="batch"):
        Trainer(task, [1, 2], device="cpu", max_steps=2)
    with pytest.raises(ValueError, match="no checkpoint path"):
        Trainer(task, data, device="cpu", max_steps=2, progress=False).save()


def test_progress_bar_runs(capsys):
    task = RegressionTask()
    trainer = Trainer(task, DatasetBatches(Items(), 4, collate_fn=stack), device="cpu", max_steps=3,
                      progress=True)
    trainer.fit()
    err = capsys.readouterr().err
    assert "3/3" in err and "main=" in err


def test_progress_bar_of_a_time_budget_counts_seconds(capsys):
    # a run bounded by time (notebook 03's equal-compute runs) has no known step count: the bar shows
    # training seconds out of the budget and the step reached, not a total of max_steps
    trainer = Trainer(RegressionTask(), DatasetBatches(Items(), 4, collate_fn=stack), device="cpu",
                      max_steps=None, progress=True)
    trainer.fit(time_budget_s=1.0)
    err = capsys.readouterr().err
    assert "1/1 s of training" in err and f"step={trainer.step}" in err
    assert "1000000000" not in err
    trainer.fit(time_budget_s=1.0)  # a second call continues the count of seconds
    assert "2/2 s of training" in capsys.readouterr().err


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    trainer = Trainer(RegressionTask(), DatasetBatches(Items(), 4, collate_fn=stack), device="cpu",
                      max_steps=2, out_dir=tmp_path, progress=False)
    trainer.fit()
    good = trainer.default_checkpoint_path().read_bytes()
    with torch.no_grad():
        next(trainer.task.modules()["net"].parameters()).fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="non-finite weights.*last checkpoint.*left untouched"):
        trainer.save()
    assert trainer.default_checkpoint_path().read_bytes() == good


def test_a_run_bounded_by_time_has_no_step_limit(tmp_path):
    # max_steps=None: fit needs a time budget (or a step count); checkpoints keep None and resume with it
    trainer = Trainer(RegressionTask(), DatasetBatches(Items(), 4, collate_fn=stack), device="cpu",
                      max_steps=None, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="bounded by time"):
        trainer.fit()
    trainer.fit(time_budget_s=0.2)
    assert trainer.step > 0 and trainer.max_steps is None
    trainer.fit(steps=2)
    trainer.save()
    resumed = Trainer(RegressionTask(), DatasetBatches(Items(), 4, collate_fn=stack), device="cpu",
                      max_steps=None, out_dir=tmp_path, progress=False)
    assert resumed.resume_if_present() and resumed.step == trainer.step and resumed.max_steps is None


# ------------------------------------------------------------------ AutoencoderTask (real modules)
from minildm.engine.tasks import AutoencoderTask  # noqa: E402
from minildm.losses.perceptual import LPIPSWithDiscriminator, VQLPIPSWithDiscriminator  # noqa: E402
from minildm.models.autoencoder import AutoencoderKL, VQModel  # noqa: E402
from minildm.models.encoder_decoder import AutoencoderConfig


class Images:
    def __init__(self, n: int = 8, size: int = 32) -> None:
        g = torch.Generator().manual_seed(7)
        self.x = torch.rand(n, 3, size, size, generator=g) * 2 - 1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.x[i]}


def image_batches(seed: int = 0) -> DatasetBatches:
    return DatasetBatches(Images(), 4, seed=seed,
                          collate_fn=lambda items: {"image": torch.stack([it["image"] for it in items])})


def tiny_ae_task(regularizer: str, gan: bool, disc_start: int = 0, seed: int = 0, dropout: float = 0.0):
    torch.manual_seed(seed)
    if regularizer == "kl":
        model = AutoencoderKL(AutoencoderConfig(resolution=32, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                                                z_channels=2, dropout=dropout))
        loss = LPIPSWithDiscriminator(disc_start=disc_start, perceptual_weight=0.0,
                                      disc_weight=0.5 if gan else 0.0, disc_ndf=8, disc_num_layers=2)
    else:
        model = VQModel(AutoencoderConfig(resolution=32, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                                          z_channels=2, n_embed=16, dropout=dropout))
        loss = VQLPIPSWithDiscriminator(disc_start=disc_start, perceptual_weight=0.0,
                                        disc_weight=0.75 if gan else 0.0, disc_ndf=8, disc_num_layers=2)
    return AutoencoderTask(model, loss, lr=1e-3)


def snapshot(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def changed(before, module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


@pytest.mark.parametrize("regularizer", ["kl", "vq"])
def test_autoencoder_task_two_optimizers(regularizer):
    task = tiny_ae_task(regularizer, gan=True, disc_start=0)
    assert task.optimizer_names == ("ae", "disc")
    opts = task.configure_optimizers()
    ae_ids = {id(p) for g in opts["ae"].param_groups for p in g["params"]}
    disc_ids = {id(p) for p in task.loss.discriminator.parameters()}
    assert not ae_ids & disc_ids
    assert {id(p) for p in task.model.parameters()} <= ae_ids
    assert opts["ae"].param_groups[0]["betas"] == (0.5, 0.9)
    if regularizer == "kl":
        assert id(task.loss.logvar) in ae_ids  # the learned log-variance trains with the autoencoder

    trainer = Trainer(task, image_batches(), device="cpu", max_steps=2, progress=False)
    forwards = []
    task.model.register_forward_hook(lambda *a: forwards.append(1))
    batch = trainer.data.batch(0)
    model0, disc0 = snapshot(task.model), snapshot(task.loss.discriminator)
    logs = trainer.optimizer_step("ae", batch, 0)
    assert changed(model0, task.model) and not changed(disc0, task.loss.discriminator)
    assert all(p.grad is None for p in task.loss.discriminator.parameters())  # D frozen in the G step
    assert logs["train/g_loss"] != 0.0 and logs["train/d_weight"] > 0.0
    if regularizer == "vq":
        assert 1.0 <= logs["train/perplexity"] <= 16.0 and 0.0 < logs["train/codebook_usage"] <= 1.0
    model1, disc1 = snapshot(task.model), snapshot(task.loss.discriminator)
    logs = trainer.optimizer_step("disc", batch, 0)
    assert changed(disc1, task.loss.discriminator) and not changed(model1, task.model)
    assert len(forwards) == 1  # the discriminator step reused the reconstruction
    assert {"train/disc_loss", "train/logits_real", "train/logits_fake", "loss/disc"} <= set(logs)


@pytest.mark.parametrize("regularizer", ["kl", "vq"])
def test_autoencoder_task_without_discriminator(regularizer):
    task = tiny_ae_task(regularizer, gan=False)
    assert task.optimizer_names == ("ae",) and set(task.configure_optimizers()) == {"ae"}
    log = Trainer(task, image_batches(), device="cpu", max_steps=2, progress=False).fit()
    assert len(log) == 2 and "loss/disc" not in log[-1] and log[-1]["train/g_loss"] == 0.0


def test_discriminator_waits_for_disc_start():
    task = tiny_ae_task("kl", gan=True, disc_start=2)
    trainer = Trainer(task, image_batches(), device="cpu", max_steps=3, progress=False)
    disc0 = snapshot(task.loss.discriminator)
    trainer.fit(2)
    assert not changed(disc0, task.loss.discriminator)
    assert all("loss/disc" not in r for r in trainer.log)
    trainer.fit()
    assert "loss/disc" in trainer.log[-1] and changed(disc0, task.loss.discriminator)


def test_autoencoder_task_rejects_mismatched_loss():
    kl = tiny_ae_task("kl", gan=False)
    vq = tiny_ae_task("vq", gan=False)
    with pytest.raises(ValueError, match="VQLPIPSWithDiscriminator"):
        AutoencoderTask(vq.model, kl.loss, lr=1e-3)
    with pytest.raises(ValueError, match="lr"):
        AutoencoderTask(kl.model, kl.loss, lr=0)


def test_autoencoder_resume_is_bit_identical(tmp_path):
    """KL sampling, dropout, two Adam optimizers and the GAN start in the second half."""
    straight = tiny_ae_task("kl", gan=True, disc_start=2, dropout=0.1)
    log1 = Trainer(straight, image_batches(), device="cpu", max_steps=4, seed=3, progress=False).fit()
    first = tiny_ae_task("kl", gan=True, disc_start=2, dropout=0.1)
    t = Trainer(first, image_batches(), device="cpu", max_steps=4, seed=3, progress=False, out_dir=tmp_path)
    t.fit(2)
    resumed = tiny_ae_task("kl", gan=True, disc_start=2, dropout=0.1, seed=9)
    log2 = Trainer.from_checkpoint(tmp_path / "checkpoint.safetensors", resumed, image_batches(),
                                   device="cpu", progress=False).fit()
    assert _without_time(log1) == _without_time(log2)
    for m1, m2 in ((straight.model, resumed.model), (straight.loss, resumed.loss)):
        for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
            assert torch.equal(a, b), k


def test_time_budget_stops_training():
    import time as _time

    from torch import nn

    class SlowTask:
        optimizer_names = ("opt",)

        def __init__(self):
            self.net = nn.Linear(1, 1)

        def modules(self):
            return {"net": self.net}

        def configure_optimizers(self):
            return {"opt": torch.optim.SGD(self.net.parameters(), lr=0.1)}

        def training_step(self, batch, step, name):
            _time.sleep(0.02)
            return self.net(batch).square().mean(), {}

    class Batches:
        def batch(self, step):
            return torch.ones(2, 1)

    trainer = Trainer(SlowTask(), Batches(), device="cpu", max_steps=10_000, progress=False)
    log = trainer.fit(time_budget_s=0.2)
    assert 3 <= trainer.step < 100 and log[-1]["time_s"] >= 0.18
    with pytest.raises(ValueError, match="time_budget_s"):
        trainer.fit(time_budget_s=-1)


def test_fit_trains_inside_a_no_grad_block():
    """Models trained on first use from an evaluation (itself under no_grad) still learn."""
    task, _, trainer = make(max_steps=3)
    before = params(task)
    with torch.no_grad():
        trainer.fit()
    assert trainer.step == 3 and any(not torch.equal(a, b) for a, b in zip(before, params(task)))


def test_precision_choices_and_bf16_autocast():
    _, _, trainer = make(precision="fp32")
    assert trainer.dtype is None
    _, _, trainer = make(precision="bf16")
    assert trainer.dtype == torch.bfloat16
    seen = []

    class Probe(RegressionTask):
        def training_step(self, batch, step, name):
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            return super().training_step(batch, step, name)

    trainer = Trainer(Probe(), DatasetBatches(Items(), 4, collate_fn=stack), device="cpu", max_steps=1,
                      progress=False, precision="bf16")
    trainer.fit()
    assert seen and all(d == torch.bfloat16 for d in seen)
    with pytest.raises(ValueError, match="unknown precision"):
        make(precision="fp8")


def test_dataset_batches_parts_load_only_their_slice():
    loaded = []

    class Logged(Items):
        def __getitem__(self, i):
            loaded.append(i)
            return super().__getitem__(i)

    data = DatasetBatches(Logged(), batch_size=4, seed=3, collate_fn=stack)
    full = data.batch(2)
    loaded.clear()
    part = data.batch(2, part=(1, 3))
    assert len(loaded) == 2 and torch.equal(part["x"], full["x"][1:3])


def test_warmup_scales_the_first_steps_and_restores_the_rates():
    """With warmup_steps=4 the first SGD step moves the weights by a quarter of a plain step; the optimizer's
    rates are the task's own afterwards (the warm-up composes with any schedule the task sets)."""
    moves = {}
    for warmup in (0, 4):
        task, _, trainer = make(max_steps=1, warmup_steps=warmup)
        before = task.aux.weight.detach().clone()
        trainer.fit()
        moves[warmup] = (task.aux.weight.detach() - before).abs().max().item()
        assert [g["lr"] for g in trainer.optimizers["aux"].param_groups] == [1e-2]
    assert moves[4] == pytest.approx(moves[0] / 4, rel=1e-4)
    with pytest.raises(ValueError, match="warmup_steps"):
        make(warmup_steps=-1)
