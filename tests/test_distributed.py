"""Data-parallel training: 2 processes under Gloo equal 1 process with the same global batch."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from minildm.conditioning.text import TransformerTextEmbedder, WordTokenizer
from minildm.diffusion.ldm import LatentDiffusion
from minildm.diffusion.process import GaussianDiffusion
from minildm.engine.batches import BatchRandom, LatentBatches
from minildm.engine.distributed import DistInfo, cleanup, dist_info, init_distributed, shard_bounds
from minildm.engine.tasks import LatentDiffusionTask
from minildm.engine.trainer import Trainer
from minildm.models.autoencoder import IdentityConfig, IdentityFirstStage

CAPTIONS = ["a red circle", "a blue square on the left", "two shapes: a green star and a pink cross",
            "a small yellow hexagon", "a purple diamond at the top", "an orange triangle",
            "a cyan disc in the middle", "a large red star"]
STEPS, BATCH = 3, 8


def _text_ldm() -> LatentDiffusion:
    from minildm.models.unet import UNetModel

    torch.manual_seed(0)
    tok = WordTokenizer.fit(CAPTIONS, max_length=12)
    unet = UNetModel(in_channels=3, out_channels=3, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(2,), num_heads=2, num_groups=4, context_dim=16)
    return LatentDiffusion(IdentityFirstStage(IdentityConfig(3, 8)), unet, GaussianDiffusion("linear", 50),
                           image_size=8, cond_stage_model=TransformerTextEmbedder(tok, 16, depth=1, heads=2))


def _train(accumulate: int = 1) -> tuple[dict[str, torch.Tensor], list[float]]:
    """A few AdamW steps of a tiny text-conditional LDM; returns (parameters, logged losses)."""
    ldm = _text_ldm()
    latents = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    data = LatentBatches(latents, BATCH, seed=0, cond=CAPTIONS * 2)
    task = LatentDiffusionTask(ldm, lr=1e-3, p_uncond=0.25, per_sample_rng=True)
    trainer = Trainer(task, data, device="cpu", max_steps=STEPS, progress=False, amp=False, accumulate=accumulate)
    log = trainer.fit()
    params = {f"{m}.{k}": v.detach().clone().contiguous() for m, mod in task.modules().items()
              for k, v in mod.state_dict().items()}
    return params, [r["loss/unet"] for r in log]


def _worker(rank: int, world: int, port: int, out: str, accumulate: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info, device = init_distributed("cpu")
    assert info == DistInfo(rank, world, rank) and device.type == "cpu"
    try:
        params, losses = _train(accumulate)
        if rank == 0:
            save_file({**params, "losses": torch.tensor(losses, dtype=torch.float64)}, out)
    finally:
        cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.slow
def test_ddp_two_gloo_processes_equal_one_process(tmp_path):
    single, losses = _train()
    out = str(tmp_path / "ddp.safetensors")
    mp.spawn(_worker, args=(2, _free_port(), out, 1), nprocs=2, join=True)
    ddp = load_file(out)
    ddp_losses = ddp.pop("losses").tolist()
    assert _close(single, ddp) < 1e-5, "2-process DDP diverged from the 1-process run"
    assert ddp_losses == pytest.approx(losses, rel=1e-5)
    # and training did move the weights (the comparison is not vacuous)
    fresh = {f"unet.{k}": v for k, v in _text_ldm().model.state_dict().items()}
    assert max(float((single[k] - fresh[k]).abs().max()) for k in fresh) > 1e-3


def test_gradient_accumulation_equals_full_batch():
    full, losses = _train(accumulate=1)
    acc, acc_losses = _train(accumulate=4)
    assert _close(full, acc) < 1e-5
    assert acc_losses == pytest.approx(losses, rel=1e-5)


def test_batch_random_is_split_invariant():
    whole = BatchRandom(3, 5, 0, 8, 8)
    a, b = BatchRandom(3, 5, 0, 4, 8), BatchRandom(3, 5, 4, 8, 8)
    assert torch.equal(whole.randn(2, 3), torch.cat([a.randn(2, 3), b.randn(2, 3)]))
    assert torch.equal(whole.randint(100), torch.cat([a.randint(100), b.randint(100)]))
    assert not torch.equal(BatchRandom(3, 6, 0, 8, 8).rand(), BatchRandom(3, 5, 0, 8, 8).rand())
    with pytest.raises(ValueError):
        BatchRandom(0, 0, 4, 4, 8)


def test_shard_bounds_and_single_process_defaults():
    assert [shard_bounds(8, r, 4) for r in range(4)] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    with pytest.raises(ValueError, match="divisible by 3"):
        shard_bounds(8, 0, 3)
    assert dist_info() == DistInfo(0, 1, 0) and not dist_info().distributed


def test_accumulate_must_divide_the_batch():
    ldm = _text_ldm()
    data = LatentBatches(torch.randn(8, 3, 8, 8), 6, cond=CAPTIONS)
    trainer = Trainer(LatentDiffusionTask(ldm, 1e-3, per_sample_rng=True), data, device="cpu", max_steps=1,
                      progress=False, accumulate=4)
    with pytest.raises(ValueError, match="accumulate=4"):
        trainer.fit()


def test_local_only_makes_a_rank_act_alone():
    from minildm.engine.distributed import local_only

    with local_only():
        assert dist_info() == DistInfo(0, 1, 0)
    assert dist_info() == DistInfo(0, 1, 0)  # no process group here either
