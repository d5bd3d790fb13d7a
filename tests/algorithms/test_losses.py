"""Masked reductions and loss terms, checked against hand-computed values."""

import math

import pytest
import torch

from orchestrator.algorithms import (
    POLICY_LOSSES,
    clipped_value_loss,
    entropy_from_logits,
    kl_loss_term,
    masked_mean,
    masked_whiten,
    ppo_policy_loss,
)
from orchestrator.errors import ConfigError

F64 = torch.float64


def t(rows):
    return torch.tensor(rows, dtype=F64)


def test_masked_mean_by_hand():
    x = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    # all dims: (1 + 2 + 4) / 3 = 7/3
    assert masked_mean(x, mask).item() == pytest.approx(7.0 / 3.0)
    # per row: (1 + 2) / 2 = 1.5 and 4 / 1 = 4.0
    assert torch.allclose(masked_mean(x, mask, dim=1), t([1.5, 4.0]))
    # nothing real -> 0, not NaN
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


def test_masked_whiten_by_hand():
    x = t([[1.0, 2.0, 3.0, 100.0]])
    mask = t([[1.0, 1.0, 1.0, 0.0]])
    # mean = (1 + 2 + 3) / 3 = 2; var = (1 + 0 + 1) / 3 = 2/3; std = 0.8164966
    # (x - 2) / std = [-1.2247449, 0, 1.2247449]
    out = masked_whiten(x, mask) * mask
    assert torch.allclose(out, t([[-1.2247449, 0.0, 1.2247449, 0.0]]), atol=1e-6)


def test_entropy_uniform_is_log_v():
    logits = torch.zeros(2, 3, 4)
    # uniform over 4 tokens: H = log 4 = 1.3862944
    assert torch.allclose(entropy_from_logits(logits), torch.full((2, 3), 1.3862944), atol=1e-6)


def test_entropy_one_hot_is_zero():
    logits = torch.tensor([[[50.0, 0.0, 0.0, 0.0]]])
    assert entropy_from_logits(logits).shape == (1, 1)
    assert entropy_from_logits(logits).item() == pytest.approx(0.0, abs=1e-6)


def test_entropy_by_hand():
    # p = [0.5, 0.25, 0.25]: H = 0.5*ln 2 + 2 * 0.25*ln 4 = 0.5*ln 2 + ln 2 = 1.5 * 0.6931472
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    assert entropy_from_logits(logits).item() == pytest.approx(1.0397208, abs=1e-6)


# Five tokens with old_logp = 0, so ratio = exp(logp):
#   a: ratio 1.1, A=+1 -> unclipped -1.1, clipped -1*1.1 = -1.1 -> max -1.1 (not clipped)
#   b: ratio 1.5, A=+3 -> unclipped -4.5, clipped -3*1.2 = -3.6 -> max -3.6 (clipped)
#   c: ratio 0.5, A=-1 -> unclipped +0.5, clipped +1*0.8 = +0.8 -> max +0.8 (clipped)
#   d: ratio 0.5, A=+1 -> unclipped -0.5, clipped -1*0.8 = -0.8 -> max -0.5 (not clipped)
#   e: ratio 3.0, A=+5 -> masked out
RATIOS = [1.1, 1.5, 0.5, 0.5, 3.0]
ADV = t([[1.0, 3.0, -1.0, 1.0, 5.0]])


def _logp():
    return torch.log(t([RATIOS])).requires_grad_(True)


def test_ppo_unclipped_regime():
    mask = t([[1.0, 0.0, 0.0, 1.0, 0.0]])  # tokens a and d only
    loss, stats = ppo_policy_loss(_logp(), torch.zeros(1, 5, dtype=F64), ADV, mask, clip_eps=0.2)
    # (-1.1 + -0.5) / 2 = -0.8
    assert loss.item() == pytest.approx(-0.8)
    assert stats["clipfrac"] == 0.0
    # 0.5 * (ln(1.1)^2 + ln(0.5)^2) / 2 = 0.5 * (0.0090840 + 0.4804530) / 2
    assert stats["approx_kl"] == pytest.approx(0.5 * (0.0090840 + 0.4804530) / 2, abs=1e-6)


def test_ppo_clipped_regime_and_gradient():
    logp = _logp()
    mask = t([[1.0, 1.0, 1.0, 1.0, 0.0]])
    loss, stats = ppo_policy_loss(logp, torch.zeros(1, 5, dtype=F64), ADV, mask, clip_eps=0.2)
    # (-1.1 - 3.6 + 0.8 - 0.5) / 4 = -4.4 / 4 = -1.1
    assert loss.item() == pytest.approx(-1.1)
    # b and c picked the clipped term: 2 of 4 real tokens
    assert stats["clipfrac"] == pytest.approx(0.5)
    # 0.5 * (ln 1.1^2 + ln 1.5^2 + 2 * ln 0.5^2) / 4
    expected_kl = 0.5 * (0.0090840 + 0.1644019 + 2 * 0.4804530) / 4
    assert stats["approx_kl"] == pytest.approx(expected_kl, abs=1e-6)
    assert isinstance(stats["clipfrac"], float) and isinstance(stats["approx_kl"], float)
    loss.backward()
    # d(-A * ratio)/d logp = -A * ratio, divided by 4 tokens; clipped and masked tokens get 0
    # a: -1 * 1.1 / 4 = -0.275; d: -1 * 0.5 / 4 = -0.125
    assert torch.allclose(logp.grad, t([[-0.275, 0.0, 0.0, -0.125, 0.0]]))


def test_ppo_is_registered():
    assert POLICY_LOSSES.get("ppo") is ppo_policy_loss
    with pytest.raises(ConfigError, match="choose one of: ppo"):
        POLICY_LOSSES.get("dpo")


# Value tokens (clip_eps = 0.2):
#   1: v=1.0, old=0.9, R=1.5: v-old=0.1 inside -> both errors (1.0-1.5)^2 = 0.25
#   2: v=2.0, old=1.0, R=1.0: v_clip = 1.2; (2-1)^2 = 1.0 vs (1.2-1)^2 = 0.04 -> 1.0
#   3: v=2.0, old=1.0, R=3.0: v_clip = 1.2; (2-3)^2 = 1.0 vs (1.2-3)^2 = 3.24 -> 3.24
#   4: masked out
VALUES = t([[1.0, 2.0, 2.0, 50.0]])
OLD_VALUES = t([[0.9, 1.0, 1.0, 0.0]])
RETURNS = t([[1.5, 1.0, 3.0, -50.0]])


def test_value_loss_unclipped():
    mask = t([[1.0, 0.0, 0.0, 0.0]])
    # 0.5 * 0.25 = 0.125
    assert clipped_value_loss(VALUES, OLD_VALUES, RETURNS, mask).item() == pytest.approx(0.125)


def test_value_loss_clipped():
    mask = t([[1.0, 1.0, 1.0, 0.0]])
    # 0.5 * (0.25 + 1.0 + 3.24) / 3 = 0.5 * 4.49 / 3 = 0.7483333
    loss = clipped_value_loss(VALUES, OLD_VALUES, RETURNS, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.7483333, abs=1e-6)


def test_kl_loss_term_by_hand():
    logp = t([[-1.0, -2.0]])
    ref = t([[-1.5, -1.0]])
    # k3 on token 1 only: exp(-0.5) + 0.5 - 1 = 0.1065307
    assert kl_loss_term(logp, ref, t([[1.0, 0.0]])).item() == pytest.approx(0.1065307, abs=1e-6)
    # k1 on both: (0.5 + -1.0) / 2 = -0.25
    assert kl_loss_term(logp, ref, t([[1.0, 1.0]]), estimator="k1").item() == pytest.approx(-0.25)
    with pytest.raises(ConfigError, match="algorithm.kl_estimator='kx'"):
        kl_loss_term(logp, ref, t([[1.0, 1.0]]), estimator="kx")


def test_hand_constants_used_above():
    # The log constants typed into the tests above.
    assert math.log(1.1) ** 2 == pytest.approx(0.0090840, abs=1e-7)
    assert math.log(1.5) ** 2 == pytest.approx(0.1644019, abs=1e-7)
    assert math.log(0.5) ** 2 == pytest.approx(0.4804530, abs=1e-7)
