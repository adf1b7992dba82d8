"""Conditioners τ_θ, conditioning dropout, classifier-free guidance and cross-attention maps."""
from __future__ import annotations

import pytest
import torch

from minildm.conditioning.base import build_conditioner
from minildm.conditioning.classes import ClassEmbedder
from minildm.conditioning.layout import LayoutEmbedder
from minildm.data import load_dataset
from minildm.diffusion.guidance import guided_model
from minildm.diffusion.ldm import LatentDiffusion
from minildm.diffusion.process import GaussianDiffusion
from minildm.engine.tasks import LatentDiffusionTask
from minildm.eval.attention_maps import record_cross_attention
from minildm.models.autoencoder import IdentityConfig, IdentityFirstStage
from minildm.models.unet import UNetModel


def _layout(n: int = 2):
    ds = load_dataset("shapes", "val", 32, length=n)
    return [ds[i]["objects"] for i in range(n)]


def _cond_ldm(conditioner, width=16):
    torch.manual_seed(0)
    unet = UNetModel(in_channels=3, out_channels=3, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                     attention_resolutions=(1, 2), num_heads=2, num_groups=4, context_dim=width)
    for p in unet.parameters():  # non-zero everywhere, so that the context visibly matters
        p.data.normal_(0, 0.05)
    return LatentDiffusion(IdentityFirstStage(IdentityConfig(3, 8)), unet, GaussianDiffusion("linear", 20),
                           image_size=8, cond_stage_model=conditioner)


def test_class_embedder_tokens_null_and_drop():
    emb = ClassEmbedder(5, 16)
    ctx, mask = emb(torch.tensor([0, 4, 2]))
    assert ctx.shape == (3, 1, 16) and mask is None
    null, _ = emb.null(3)
    assert torch.equal(null[0], emb.embedding.weight[5][None]) and torch.equal(null[0], null[2])
    dropped, _ = emb(torch.tensor([0, 4, 2]), drop=torch.tensor([True, False, True]))
    assert torch.equal(dropped[0], null[0]) and torch.equal(dropped[1], ctx[1]) and torch.equal(dropped[2], null[0])
    assert build_conditioner(emb.config()).embedding.weight.shape == emb.embedding.weight.shape


@pytest.mark.parametrize("labels, match", [([5], "unknown class"), ([-1], "unknown class"),
                                           (torch.zeros(2, 2, dtype=torch.long), "shape \\(B,\\)"),
                                           (torch.tensor([0.5]), "integers")])
def test_class_embedder_bad_labels(labels, match):
    with pytest.raises(ValueError, match=match):
        ClassEmbedder(5, 8)(labels)


def test_layout_embedder_from_shapes_objects():
    objs = _layout(4)
    emb = LayoutEmbedder(7, 8, embed_dim=16, max_objects=3)
    ctx, mask = emb(objs)
    assert ctx.shape == (4, 4, 16) and mask.shape == (4, 4)
    assert mask[:, 0].all() and mask[:, 1:].sum(1).tolist() == [len(o) for o in objs]
    assert torch.all(ctx[~mask] == 0)  # padded tokens carry nothing
    null, null_mask = emb.null(2)
    assert null_mask.tolist() == [[True, False, False, False]] * 2
    dropped, dmask = emb(objs, drop=torch.tensor([True, False, False, True]))
    assert torch.allclose(dropped[0], null[0], atol=1e-6) and torch.equal(dmask[1], mask[1])


def test_layout_embedder_is_permutation_equivariant():
    """Objects are a set: reordering them reorders the tokens and changes nothing else."""
    emb = LayoutEmbedder(7, 8, embed_dim=16, max_objects=3).eval()
    objs = [o for o in _layout(12) if len(o) == 3][:1]
    assert objs, "the shapes data has 3-object scenes"
    a, _ = emb(objs)
    b, _ = emb([[objs[0][2], objs[0][0], objs[0][1]]])
    assert torch.allclose(a[0, 0], b[0, 0], atol=1e-5)
    assert torch.allclose(a[0, 1:][[2, 0, 1]], b[0, 1:], atol=1e-5)


def test_layout_embedder_bad_inputs():
    emb = LayoutEmbedder(7, 8, embed_dim=16, max_objects=2)
    obj = {"box": (0.1, 0.1, 0.4, 0.5), "shape_id": 1, "colour_id": 2}
    with pytest.raises(ValueError, match="at most 2"):
        emb([[obj, obj, obj]])
    for box in [(-0.1, 0.1, 0.4, 0.5), (0.1, 0.1, 1.2, 0.5), (0.5, 0.1, 0.4, 0.5)]:
        with pytest.raises(ValueError, match="inside the image"):
            emb([[{**obj, "box": box}]])
    with pytest.raises(ValueError, match="unknown colour"):
        emb([[{**obj, "colour_id": 8}]])
    with pytest.raises(ValueError, match="divisible"):
        LayoutEmbedder(7, 8, embed_dim=10, heads=4)
    with pytest.raises(ValueError, match="unknown conditioner"):
        build_conditioner({"type": "audio"})


def test_guidance_one_batched_forward_and_limits():
    ldm = _cond_ldm(ClassEmbedder(4, 16)).eval()
    ctx, _ = ldm.get_learned_conditioning(torch.tensor([1, 3]))
    null, _ = ldm.cond_stage_model.null(1)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 17])
    calls = []
    model = lambda *a, **k: (calls.append(a[0].shape[0]), ldm.model(*a, **k))[1]  # noqa: E731
    with torch.no_grad():
        cond = ldm.model(x, t, context=ctx)
        uncond = ldm.model(x, t, context=null.expand(2, -1, -1))
        assert torch.equal(guided_model(model, 1.0, null)(x, t, context=ctx), cond)  # scale 1: conditional
        calls.clear()
        g3 = guided_model(model, 3.0, null)(x, t, context=ctx)
        assert calls == [4]  # one batched forward for both halves
        assert torch.allclose(g3, uncond + 3.0 * (cond - uncond), atol=1e-5)
        assert torch.allclose(guided_model(model, 0.0, null)(x, t, context=ctx), uncond, atol=1e-5)
    assert (cond - uncond).abs().max() > 1e-3


def test_guided_layout_sampling_uses_masks():
    ldm = _cond_ldm(LayoutEmbedder(7, 8, embed_dim=16, max_objects=3)).eval()
    objs = _layout(2)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a = ldm.sample(2, steps=4, cond=objs, guidance_scale=2.5, generator=g())
    b = ldm.sample(2, steps=4, cond=objs, guidance_scale=2.5, generator=g())
    c = ldm.sample(2, steps=4, cond=objs, guidance_scale=1.0, generator=g())
    assert a.shape == (2, 3, 8, 8) and torch.equal(a, b) and not torch.allclose(a, c)
    with pytest.raises(ValueError, match="pass cond"):
        ldm.sample(2, steps=4)
    with pytest.raises(ValueError, match="3 conditions for n=2"):
        ldm.sample(2, steps=4, cond=_layout(3))
    with pytest.raises(ValueError, match="guidance_scale"):
        ldm.sample(2, steps=4, cond=objs, guidance_scale=-1.0)


def test_conditioner_width_must_match_the_unet():
    with pytest.raises(ValueError, match="context_dim=16"):
        _cond_ldm(ClassEmbedder(4, 8))


def test_conditioning_dropout_rate_is_honoured():
    ldm = _cond_ldm(ClassEmbedder(4, 16))
    task = LatentDiffusionTask(ldm, lr=1e-3, p_uncond=0.25)
    seen = []
    original = ldm.get_learned_conditioning

    def spy(cond, drop=None):
        seen.append(drop)
        return original(cond, drop=drop)

    ldm.get_learned_conditioning = spy
    torch.manual_seed(0)
    batch = {"latent": torch.randn(400, 3, 8, 8), "cond": torch.randint(0, 4, (400,))}
    for step in range(5):
        task.training_step(batch, step, "unet")
    rate = torch.cat(seen).float().mean().item()
    assert abs(rate - 0.25) < 0.03  # 2000 draws: 3 standard deviations ≈ 0.029
    assert set(task.modules()) == {"unet", "cond_stage"}
    opt = task.configure_optimizers()["unet"]
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(
        p.numel() for m in task.modules().values() for p in m.parameters())
    with pytest.raises(ValueError, match="'cond'"):
        task.training_step({"latent": batch["latent"][:2]}, 0, "unet")
    with pytest.raises(ValueError, match="p_uncond"):
        LatentDiffusionTask(ldm, lr=1e-3, p_uncond=1.5)


def test_attention_maps_record_without_changing_outputs():
    ldm = _cond_ldm(LayoutEmbedder(7, 8, embed_dim=16, max_objects=3)).eval()
    objs = _layout(2)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    plain = ldm.sample(2, steps=3, cond=objs, guidance_scale=2.0, generator=g())
    with record_cross_attention(ldm.model) as maps:
        recorded = ldm.sample(2, steps=3, cond=objs, guidance_scale=2.0, generator=g())
    assert torch.allclose(plain, recorded, atol=1e-5)
    assert all(m.recorder is None for m in ldm.model.modules() if hasattr(m, "recorder"))
    assert maps.steps == [0, 1, 2] and maps.timesteps == sorted(maps.timesteps, reverse=True)
    from minildm.models.nn.transformer import SpatialTransformer

    n_layers = sum(isinstance(m, SpatialTransformer) for m in ldm.model.modules())
    assert n_layers == 7 and len(maps.layers) == n_layers  # 2 down, 1 middle, 4 up: every attn2 of this UNet
    rec = maps.records[0]
    assert rec.probs.shape[0] == 4 and torch.allclose(rec.probs.sum(-1), torch.ones(4, rec.probs.shape[1]))
    _, mask = ldm.get_learned_conditioning(objs)
    assert torch.all(rec.probs[:2][~mask[:, None, :].expand_as(rec.probs[:2])] == 0)  # padded tokens get nothing
    m = maps.maps(n=2)
    assert m.shape == (2, 4, 8, 8) and torch.allclose(m.sum(1), torch.ones(2, 8, 8), atol=1e-5)
    assert maps.maps(layer=maps.layers[2], step=1, n=2, size=16).shape == (2, 4, 16, 16)
    with pytest.raises(ValueError, match="unknown layer"):
        maps.maps(layer="nope")
    plain_unet = UNetModel(in_channels=3, out_channels=3, model_channels=16, channel_mult=(1,), num_groups=4)
    with pytest.raises(ValueError, match="no cross-attention"):
        with record_cross_attention(plain_unet):
            pass
