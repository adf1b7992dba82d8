"""EMA: warm-up decay, update rule, average_parameters, state round trip."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from minildm.engine.ema import EMA


def test_update_rule_and_warmup():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    ema = EMA(model, decay=0.9)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update()
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 0.9))  # 0 − 0.9 · (0 − 1)
    for _ in range(200):
        ema.update()
    assert ema.current_decay() == pytest.approx(0.9)
    no_warm = EMA(model, decay=0.5, use_warmup=False)
    assert no_warm.current_decay() == 0.5
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.0)


def test_average_parameters_restores_and_state_round_trip():
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.99)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update()
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with ema.average_parameters() as m:
        assert torch.allclose(m.weight, ema.shadow["weight"])
    assert all(torch.equal(trained[k], v) for k, v in model.state_dict().items())
    other = EMA(nn.Linear(2, 2))
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1 and torch.equal(other.shadow["weight"], ema.shadow["weight"])
    with pytest.raises(ValueError, match="does not match"):
        EMA(nn.Linear(3, 3, bias=False)).load_state_dict(ema.state_dict())


def test_fused_update_matches_per_tensor_rule():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    ema = EMA(model, decay=0.95, use_warmup=False)
    reference = {k: v.clone() for k, v in ema.shadow.items()}
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update()
        for k, p in model.named_parameters():
            reference[k] = reference[k] - 0.05 * (reference[k] - p.detach())
    assert set(ema.shadow) == set(reference)
    for k in reference:
        torch.testing.assert_close(ema.shadow[k], reference[k])
