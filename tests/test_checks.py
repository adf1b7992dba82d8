"""Non-finite numbers are refused at every boundary that takes a float (they passed checks written as
``x < 0`` or ``x > 0`` and turned into all-NaN images or weights with exit status 0)."""
import math

import pytest
import torch

from minildm.checks import check_number
from minildm.diffusion.guidance import guided_model

BAD = [math.nan, math.inf, -math.inf, 1e309, True, "3", None]


@pytest.mark.parametrize("value", BAD)
def test_check_number_refuses_non_finite_and_non_numbers(value):
    with pytest.raises(ValueError, match="must be a finite number"):
        check_number("x", value, minimum=0)


def test_check_number_bounds_and_scalars():
    assert check_number("x", 0, minimum=0) == 0.0 and check_number("x", torch.tensor(2.5), minimum=0) == 2.5
    with pytest.raises(ValueError, match="x must be a finite number > 0"):
        check_number("x", 0, minimum=0, strict=True)
    with pytest.raises(ValueError, match="<= 1"):
        check_number("x", 1.5, minimum=0, maximum=1)


@pytest.mark.parametrize("scale", [math.nan, math.inf, 1e308 * 10, -1.0])
def test_guidance_scale_must_be_finite(scale):
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
        guided_model(lambda x, t, **kw: x, scale)


@pytest.mark.parametrize("lr", [math.nan, math.inf, 0.0])
def test_learning_rates_must_be_finite_and_positive(lr):
    from minildm.engine.tasks import LatentDiffusionTask

    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        LatentDiffusionTask(torch.nn.Linear(1, 1), lr)


@pytest.mark.parametrize("name", ["kl_weight", "perceptual_weight", "disc_weight"])
def test_loss_weights_must_be_finite(name):
    from minildm.losses.perceptual import LPIPSWithDiscriminator

    with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0"):
        LPIPSWithDiscriminator(disc_start=0, **{name: math.nan})


def test_time_budget_and_snr_gamma_must_be_finite():
    from minildm.diffusion.process import check_loss_weighting
    from minildm.engine.batches import DatasetBatches
    from minildm.engine.trainer import Trainer

    with pytest.raises(ValueError, match="snr_gamma"):
        check_loss_weighting(math.nan, "min_snr")

    class Task:
        optimizer_names = ("m",)

        def modules(self):
            return {"m": self.m}

        def __init__(self):
            self.m = torch.nn.Linear(1, 1)

        def configure_optimizers(self):
            return {"m": torch.optim.SGD(self.m.parameters(), lr=0.1)}

        def training_step(self, batch, step, name):
            return self.m(batch).pow(2).mean(), {}

    trainer = Trainer(Task(), DatasetBatches([torch.ones(1)] * 4, 2, collate_fn=torch.stack), device="cpu",
                      max_steps=None, progress=False)
    with pytest.raises(ValueError, match="time_budget_s"):
        trainer.fit(time_budget_s=math.inf)
    with pytest.raises(ValueError, match="grad_clip"):
        Trainer(Task(), DatasetBatches([torch.ones(1)] * 4, 2, collate_fn=torch.stack), device="cpu", max_steps=1,
                grad_clip=math.nan)
