"""DPO-family, Bradley-Terry and SFT losses, checked against values worked out by hand.

softplus(x) = log(1 + e^x) = -logsigmoid(-x), so -logsigmoid(h) = softplus(-h). Constants typed
below are checked against math in test_hand_constants_used_above.
"""

import math
import re

import pytest
import torch

from orchestrator.algorithms import (
    PREFERENCE_LOSSES,
    PairLogps,
    PreferenceParams,
    bradley_terry_loss,
    needs_reference,
    preference_metrics,
    sft_loss,
)
from orchestrator.algorithms.preference import log1mexp
from orchestrator.errors import ConfigError

F64 = torch.float64
LOG2 = math.log(2.0)


def t(values, grad=False):
    return torch.tensor(values, dtype=F64, requires_grad=grad)


# The shared 2-pair example (beta = 0.5):
#   pair 1: c=-5, ref_c=-6 (ratio +1), len_c=2;  r=-7, ref_r=-6 (ratio -1), len_r=4
#   pair 2: c=-8, ref_c=-7 (ratio -1), len_c=4;  r=-4, ref_r=-7 (ratio +3), len_r=2
def pairs(with_ref=True, grad=False):
    return PairLogps(
        chosen=t([-5.0, -8.0], grad),
        rejected=t([-7.0, -4.0], grad),
        chosen_len=t([2.0, 4.0]),
        rejected_len=t([4.0, 2.0]),
        ref_chosen=t([-6.0, -7.0]) if with_ref else None,
        ref_rejected=t([-6.0, -7.0]) if with_ref else None,
    )


BETA_HALF = PreferenceParams(beta=0.5)


def run(name, p, params):
    return PREFERENCE_LOSSES.get(name)(p, params)


def test_sigmoid_by_hand_with_metrics():
    losses, rc, rr = run("sigmoid", pairs(), BETA_HALF)
    # pair 1: h = 0.5 * (1 - (-1)) = 1   -> softplus(-1) = 0.3132617
    # pair 2: h = 0.5 * (-1 - 3)   = -2  -> softplus(2)  = 2.1269280
    assert torch.allclose(losses, t([0.3132617, 2.1269280]), atol=1e-6)
    # rewards = beta * ratio: chosen [0.5, -0.5], rejected [-0.5, 1.5]
    assert torch.allclose(rc, t([0.5, -0.5])) and torch.allclose(rr, t([-0.5, 1.5]))
    m = preference_metrics(losses, rc, rr, pairs())
    assert set(m) == {
        "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies",
        "rewards/margins", "logps/chosen", "logps/rejected",
    }
    assert all(isinstance(v, float) for v in m.values())
    assert m["loss"] == pytest.approx((0.3132617 + 2.1269280) / 2, abs=1e-6)  # 1.2200948
    assert m["rewards/chosen"] == pytest.approx(0.0)  # (0.5 - 0.5) / 2
    assert m["rewards/rejected"] == pytest.approx(0.5)  # (-0.5 + 1.5) / 2
    assert m["rewards/accuracies"] == pytest.approx(0.5)  # 0.5 > -0.5 yes, -0.5 > 1.5 no
    assert m["rewards/margins"] == pytest.approx(-0.5)  # (1.0 + -2.0) / 2
    assert m["logps/chosen"] == pytest.approx(-6.5)  # (-5 - 8) / 2
    assert m["logps/rejected"] == pytest.approx(-5.5)  # (-7 - 4) / 2


def test_sigmoid_gradient_by_hand():
    p = pairs(grad=True)
    losses, _, _ = run("sigmoid", p, BETA_HALF)
    losses.sum().backward()
    # d/dc -logsigmoid(h) = -beta * sigmoid(-h); d/dr = +beta * sigmoid(-h)
    # pair 1 (h = 1):  -0.5 * sigmoid(-1) = -0.5 * 0.2689414 = -0.1344707
    # pair 2 (h = -2): -0.5 * sigmoid(2)  = -0.5 * 0.8807971 = -0.4403985
    assert torch.allclose(p.chosen.grad, t([-0.1344707, -0.4403985]), atol=1e-6)
    assert torch.allclose(p.rejected.grad, t([0.1344707, 0.4403985]), atol=1e-6)


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 3.0])
def test_policy_equal_to_reference_gives_log2(beta):
    logps = t([-3.0, -12.5, -0.25, -40.0])
    p = PairLogps(
        chosen=logps, rejected=logps.flip(0), chosen_len=t([1.0, 2.0, 3.0, 4.0]),
        rejected_len=t([5.0, 6.0, 7.0, 8.0]), ref_chosen=logps.clone(),
        ref_rejected=logps.flip(0).clone(),
    )
    params = PreferenceParams(beta=beta)
    losses, rc, rr = run("sigmoid", p, params)
    # h = 0 -> -logsigmoid(0) = log 2, rewards 0
    assert torch.allclose(losses, torch.full((4,), LOG2, dtype=F64), rtol=0, atol=1e-15)
    assert torch.count_nonzero(rc) == 0 and torch.count_nonzero(rr) == 0
    m = preference_metrics(losses, rc, rr, p)
    assert m["loss"] == pytest.approx(LOG2, abs=1e-15)
    assert m["rewards/margins"] == 0.0 and m["rewards/accuracies"] == 0.0  # ties are not wins
    # conservative DPO at h = 0: (1 - eps) log 2 + eps log 2 = log 2 as well
    ls, _, _ = run("label_smoothing", p, PreferenceParams(beta=beta, label_smoothing=0.3))
    assert torch.allclose(ls, torch.full((4,), LOG2, dtype=F64), atol=1e-15)


def test_label_smoothing_by_hand():
    params = PreferenceParams(beta=0.5, label_smoothing=0.25)
    losses, rc, rr = run("label_smoothing", pairs(), params)
    # 0.75 * softplus(-h) + 0.25 * softplus(h), and softplus(h) = softplus(-h) + h:
    # pair 1 (h = 1):  0.3132617 + 0.25 * 1    = 0.5632617
    # pair 2 (h = -2): 2.1269280 + 0.25 * (-2) = 1.6269280
    assert torch.allclose(losses, t([0.5632617, 1.6269280]), atol=1e-6)
    assert torch.allclose(rc, t([0.5, -0.5])) and torch.allclose(rr, t([-0.5, 1.5]))


def test_label_smoothing_zero_equals_sigmoid():
    gen = torch.Generator().manual_seed(0)
    c, r, ref_c, ref_r = -10 * torch.rand(4, 16, generator=gen, dtype=F64)
    p = PairLogps(chosen=c, rejected=r, chosen_len=torch.full((16,), 3.0, dtype=F64),
                  rejected_len=torch.full((16,), 5.0, dtype=F64), ref_chosen=ref_c,
                  ref_rejected=ref_r)
    params = PreferenceParams(beta=0.7, label_smoothing=0.0)
    a = run("label_smoothing", p, params)
    b = run("sigmoid", p, params)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_label_smoothing_minimum_at_log_odds_of_flip():
    # d/dh [-(1-eps) logsigmoid(h) - eps logsigmoid(-h)] = -(1-eps) sigmoid(-h) + eps sigmoid(h),
    # zero where e^h = (1-eps)/eps: eps = 0.2 -> h* = log 4. With beta = 1, c - ref_c = log 4.
    c = t([math.log(4.0)], grad=True)
    p = PairLogps(chosen=c, rejected=t([0.0]), chosen_len=t([1.0]), rejected_len=t([1.0]),
                  ref_chosen=t([0.0]), ref_rejected=t([0.0]))
    losses, _, _ = run("label_smoothing", p, PreferenceParams(beta=1.0, label_smoothing=0.2))
    losses.sum().backward()
    assert c.grad.item() == pytest.approx(0.0, abs=1e-12)


def test_ipo_by_hand():
    losses, rc, rr = run("ipo", pairs(), BETA_HALF)
    # target 1 / (2 * 0.5) = 1; length-averaged ratios:
    # pair 1: h' = 1/2 - (-1)/4 = 0.75   -> (0.75 - 1)^2  = 0.0625
    # pair 2: h' = -1/4 - 3/2   = -1.75  -> (-1.75 - 1)^2 = 7.5625
    assert torch.allclose(losses, t([0.0625, 7.5625]))
    # rewards reported as in DPO (summed ratios times beta)
    assert torch.allclose(rc, t([0.5, -0.5])) and torch.allclose(rr, t([-0.5, 1.5]))


def test_ipo_minimum_at_half_inverse_beta():
    # beta = 0.25 -> target h' = 2. len_c = 2 and everything else 0 -> h' = c / 2.
    def ipo_at(c_value):
        c = t([c_value], grad=True)
        p = PairLogps(chosen=c, rejected=t([0.0]), chosen_len=t([2.0]), rejected_len=t([1.0]),
                      ref_chosen=t([0.0]), ref_rejected=t([0.0]))
        losses, _, _ = run("ipo", p, PreferenceParams(beta=0.25))
        losses.sum().backward()
        return losses.item(), c.grad.item()

    assert ipo_at(4.0) == (0.0, 0.0)  # h' = 2: loss 0, gradient 0
    # h' = 2.5: (0.5)^2 = 0.25, gradient 2 * 0.5 * (1/2) = 0.5; h' = 1.5: 0.25 and -0.5
    assert ipo_at(5.0) == pytest.approx((0.25, 0.5))
    assert ipo_at(3.0) == pytest.approx((0.25, -0.5))


def test_simpo_by_hand_without_reference():
    params = PreferenceParams(beta=0.5, simpo_gamma=0.5)
    losses, rc, rr = run("simpo", pairs(with_ref=False), params)
    # rewards = beta * logp / len:
    # pair 1: chosen 0.5 * -5/2 = -1.25, rejected 0.5 * -7/4 = -0.875
    #         z = -1.25 + 0.875 - 0.5 = -0.875 -> softplus(0.875) = 1.2234446
    # pair 2: chosen 0.5 * -8/4 = -1.0,  rejected 0.5 * -4/2 = -1.0
    #         z = 0 - 0.5 = -0.5 -> softplus(0.5) = 0.9740770
    assert torch.allclose(losses, t([1.2234446, 0.9740770]), atol=1e-6)
    assert torch.allclose(rc, t([-1.25, -1.0])) and torch.allclose(rr, t([-0.875, -1.0]))
    # a reference, if given, is ignored
    with_ref, _, _ = run("simpo", pairs(), params)
    assert torch.equal(with_ref, losses)


def orpo_pairs(grad=False):
    # Per-token averages chosen as logs of simple probabilities:
    #   pair 1: chosen avg log(1/2) over 2 tokens, rejected avg log(1/4) over 3 tokens
    #   pair 2: chosen avg log(1/4) over 4 tokens, rejected avg log(1/2) over 1 token
    return PairLogps(
        chosen=t([2 * math.log(0.5), 4 * math.log(0.25)], grad),
        rejected=t([3 * math.log(0.25), math.log(0.5)], grad),
        chosen_len=t([2.0, 4.0]),
        rejected_len=t([3.0, 1.0]),
    )


def test_orpo_by_hand_without_reference():
    params = PreferenceParams(beta=0.5, orpo_lambda=0.1)
    losses, rc, rr = run("orpo", orpo_pairs(), params)
    # odds p/(1-p): p=1/2 -> 1 (log 0), p=1/4 -> 1/3 (log -log 3)
    # pair 1: log_odds = 0 - (-log 3) = log 3; logsigmoid(log 3) = log(3/4)
    #         loss = log 2 - 0.1 * log(3/4) = 0.6931472 + 0.0287682 = 0.7219154
    # pair 2: log_odds = -log 3; logsigmoid(-log 3) = log(1/4)
    #         loss = log 4 - 0.1 * log(1/4) = 1.1 * log 4 = 1.5249238
    assert torch.allclose(losses, t([0.7219154, 1.5249238]), atol=1e-6)
    # rewards = beta * avg: chosen 0.5 * [log 1/2, log 1/4], rejected 0.5 * [log 1/4, log 1/2]
    assert torch.allclose(rc, 0.5 * t([-LOG2, -2 * LOG2]))
    assert torch.allclose(rr, 0.5 * t([-2 * LOG2, -LOG2]))


def test_orpo_gradient_matches_naive_formula():
    # The stable log(1 - exp(x)) must give the same gradient as the naive formula where the
    # naive one is fine.
    p = orpo_pairs(grad=True)
    losses, _, _ = run("orpo", p, PreferenceParams(orpo_lambda=0.3))
    losses.sum().backward()
    c = p.chosen.detach().clone().requires_grad_(True)
    r = p.rejected.detach().clone().requires_grad_(True)
    ac, ar = c / p.chosen_len, r / p.rejected_len
    naive_odds = (ac - torch.log(1 - torch.exp(ac))) - (ar - torch.log(1 - torch.exp(ar)))
    naive = -ac - 0.3 * torch.nn.functional.logsigmoid(naive_odds)
    naive.sum().backward()
    assert torch.allclose(p.chosen.grad, c.grad) and torch.allclose(p.rejected.grad, r.grad)


def test_log1mexp_is_stable():
    x = t([-1e-12, -1e-3, -0.5, -0.7, -3.0, -50.0], grad=True)
    expected = [math.log(-math.expm1(v)) for v in x.tolist()]
    out = log1mexp(x)
    assert torch.allclose(out, t(expected), rtol=1e-12)  # -50: log1p(-e^-50) ~ -1.9e-22, exact
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    # x = 0 (a response of probability 1) stays finite in float32 and float64
    for dtype in (torch.float32, F64):
        assert torch.isfinite(log1mexp(torch.zeros(1, dtype=dtype))).all()


@pytest.mark.parametrize("name", ["sigmoid", "label_smoothing", "ipo"])
def test_reference_losses_refuse_missing_reference(name):
    with pytest.raises(ValueError, match=f"preference loss '{name}' needs reference log-probs"):
        run(name, pairs(with_ref=False), BETA_HALF)
    assert needs_reference(name) is True


@pytest.mark.parametrize("name", ["simpo", "orpo"])
def test_reference_free_losses(name):
    assert needs_reference(name) is False
    losses, rc, rr = run(name, pairs(with_ref=False), BETA_HALF)
    assert losses.shape == rc.shape == rr.shape == (2,)
    assert torch.isfinite(losses).all()


def test_registry_lists_exactly_five_losses():
    assert PREFERENCE_LOSSES.names() == ["ipo", "label_smoothing", "orpo", "sigmoid", "simpo"]
    msg = ("algorithm.preference_loss='dpo' is not a valid preference loss; "
           "choose one of: ipo, label_smoothing, orpo, sigmoid, simpo")
    with pytest.raises(ConfigError, match=f"^{re.escape(msg)}$"):
        PREFERENCE_LOSSES.get("dpo")
    with pytest.raises(ConfigError, match="algorithm.preference_loss='kto'"):
        needs_reference("kto")


def test_bradley_terry_by_hand():
    sc = t([2.0, 0.5, 1.0], grad=True)
    sr = t([1.0, 1.5, 1.0], grad=True)
    loss, stats = bradley_terry_loss(sc, sr)
    # s_c - s_r = [1, -1, 0]: (softplus(-1) + softplus(1) + log 2) / 3
    #   = (0.3132617 + 1.3132617 + 0.6931472) / 3 = 0.7732235
    assert loss.item() == pytest.approx(0.7732235, abs=1e-6)
    assert stats["loss"] == pytest.approx(0.7732235, abs=1e-6)
    assert stats["accuracy"] == pytest.approx(1 / 3)  # only pair 1 wins; the tie does not
    assert stats["scores/chosen"] == pytest.approx(3.5 / 3)
    assert stats["scores/rejected"] == pytest.approx(3.5 / 3)
    assert stats["scores/margins"] == pytest.approx(0.0)
    loss.backward()
    # d/ds_c = -sigmoid(-(s_c - s_r)) / 3 = -[0.2689414, 0.7310586, 0.5] / 3
    assert torch.allclose(sc.grad, -t([0.2689414, 0.7310586, 0.5]) / 3, atol=1e-6)
    assert torch.allclose(sr.grad, -sc.grad)


def test_bradley_terry_margin():
    loss, stats = bradley_terry_loss(t([2.0, 0.5, 1.0]), t([1.0, 1.5, 1.0]), margin=t([0.5, 0, 1]))
    # logits [1 - 0.5, -1 - 0, 0 - 1] = [0.5, -1, -1]
    #   (softplus(-0.5) + 2 * softplus(1)) / 3 = (0.4740770 + 2.6265234) / 3 = 1.0335335
    assert loss.item() == pytest.approx(1.0335335, abs=1e-6)
    assert stats["accuracy"] == pytest.approx(1 / 3)  # accuracy ignores the margin


def test_sft_loss_ignores_masked_tokens():
    logprobs = t([[-1.0, -2.0, -float("inf")], [-3.0, -50.0, -60.0]], grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    loss, stats = sft_loss(logprobs, mask)
    # (1 + 2 + 3) / 3 real tokens = 2; ppl = e^2 = 7.3890561
    assert loss.item() == pytest.approx(2.0)
    assert stats["loss"] == pytest.approx(2.0) and stats["ppl"] == pytest.approx(7.3890561)
    loss.backward()
    # -1/3 on each real token, 0 on masked ones (even the -inf one)
    assert torch.equal(logprobs.grad, t([[-1 / 3, -1 / 3, 0.0], [-1 / 3, 0.0, 0.0]]))
    # different values under the mask give the same loss
    other, _ = sft_loss(t([[-1.0, -2.0, 7.0], [-3.0, 0.0, -1e9]]), mask)
    assert other.item() == loss.item()
    # no response token at all -> 0, not NaN
    empty, _ = sft_loss(logprobs.detach(), torch.zeros_like(mask))
    assert empty.item() == 0.0


def test_hand_constants_used_above():
    def softplus(x):
        return math.log1p(math.exp(x))

    def sigmoid(x):
        return 1.0 / (1.0 + math.exp(-x))

    assert softplus(-1) == pytest.approx(0.3132617, abs=1e-7)
    assert softplus(1) == pytest.approx(1.3132617, abs=1e-7)
    assert softplus(2) == pytest.approx(2.1269280, abs=1e-7)
    assert softplus(0.875) == pytest.approx(1.2234446, abs=1e-7)
    assert softplus(0.5) == pytest.approx(0.9740770, abs=1e-7)
    assert softplus(-0.5) == pytest.approx(0.4740770, abs=1e-7)
    assert sigmoid(-1) == pytest.approx(0.2689414, abs=1e-7)
    assert sigmoid(1) == pytest.approx(0.7310586, abs=1e-7)
    assert sigmoid(2) == pytest.approx(0.8807971, abs=1e-7)
    assert -0.1 * math.log(0.75) == pytest.approx(0.0287682, abs=1e-7)
    assert LOG2 + 0.0287682 == pytest.approx(0.7219154, abs=1e-7)
    assert 1.1 * math.log(4) == pytest.approx(1.5249238, abs=1e-7)
    assert math.exp(2) == pytest.approx(7.3890561, abs=1e-7)
