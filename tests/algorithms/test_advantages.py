"""Advantage estimators, checked against hand-computed values."""

import math

import pytest
import torch

from orchestrator.algorithms import ADVANTAGE_ESTIMATORS, gae, grpo, reinforce_pp, rloo
from orchestrator.errors import ConfigError

F64 = torch.float64


def t(rows):
    return torch.tensor(rows, dtype=F64)


def close(a, b, atol=1e-6):
    return torch.allclose(a, t(b), atol=atol)


# Two rows, T = 3. Row 0 has 3 real tokens, row 1 has 2 (right-padded).
REWARDS_2 = t([1.0, 2.0])
KL_2 = t([[0.1, 0.2, 0.1], [0.0, 0.5, 9.9]])  # 9.9 sits on padding and must be ignored
MASK_2 = t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
VALUES_2 = t([[0.5, 0.4, 0.3], [1.0, 0.5, 7.0]])  # 7.0 sits on padding and must be ignored


def test_gae_1x3_by_hand():
    # r = -kl + reward on the last token = [-0.1, -0.2, -0.1 + 1.0] = [-0.1, -0.2, 0.9]
    # gamma = 0.9, lam = 0.8, gamma * lam = 0.72, V = [0.5, 0.4, 0.3], V after the end = 0
    # t=2: delta = 0.9 + 0.9*0   - 0.3 =  0.6   ; A2 = 0.6
    # t=1: delta = -0.2 + 0.9*0.3 - 0.4 = -0.33  ; A1 = -0.33 + 0.72*0.6   =  0.102
    # t=0: delta = -0.1 + 0.9*0.4 - 0.5 = -0.24  ; A0 = -0.24 + 0.72*0.102 = -0.16656
    # returns = A + V = [-0.16656 + 0.5, 0.102 + 0.4, 0.6 + 0.3] = [0.33344, 0.502, 0.9]
    adv, ret = gae(
        t([1.0]), t([[0.1, 0.2, 0.1]]), t([[1.0, 1.0, 1.0]]), t([[0.5, 0.4, 0.3]]),
        group_size=1, gamma=0.9, lam=0.8,
    )
    assert close(adv, [[-0.16656, 0.102, 0.6]])
    assert close(ret, [[0.33344, 0.502, 0.9]])


def test_gae_rows_of_different_lengths():
    # Row 0 is the 1x3 example above.
    # Row 1: r = [0.0, -0.5 + 2.0, pad] = [0.0, 1.5, 0]; V = [1.0, 0.5]
    # t=1: delta = 1.5 + 0.9*0 - 0.5 = 1.0       ; A1 = 1.0
    # t=0: delta = 0.0 + 0.9*0.5 - 1.0 = -0.55   ; A0 = -0.55 + 0.72*1.0 = 0.17
    # returns = [0.17 + 1.0, 1.0 + 0.5, 0] = [1.17, 1.5, 0]
    adv, ret = ADVANTAGE_ESTIMATORS.get("gae")(
        REWARDS_2, KL_2, MASK_2, VALUES_2, group_size=1, gamma=0.9, lam=0.8
    )
    assert close(adv, [[-0.16656, 0.102, 0.6], [0.17, 1.0, 0.0]])
    assert close(ret, [[0.33344, 0.502, 0.9], [1.17, 1.5, 0.0]])
    assert adv[1, 2].item() == 0.0 and ret[1, 2].item() == 0.0


def test_gae_accepts_bool_mask_and_needs_values():
    adv, _ = gae(REWARDS_2, KL_2, MASK_2.bool(), VALUES_2, group_size=1, gamma=0.9, lam=0.8)
    assert close(adv, [[-0.16656, 0.102, 0.6], [0.17, 1.0, 0.0]])
    with pytest.raises(ValueError, match="values"):
        gae(REWARDS_2, KL_2, MASK_2, None, group_size=1, gamma=0.9, lam=0.8)


def test_reinforce_pp_by_hand():
    # Token rewards: row 0 = [-0.1, -0.2, 0.9], row 1 = [0.0, 1.5, pad]; gamma = 0.5
    # row 0: G2 = 0.9; G1 = -0.2 + 0.5*0.9 = 0.25; G0 = -0.1 + 0.5*0.25 = 0.025
    # row 1: G1 = 1.5; G0 = 0.0 + 0.5*1.5 = 0.75
    # whitening over the 5 real tokens [0.025, 0.25, 0.9, 0.75, 1.5]:
    #   mean = 3.425 / 5 = 0.685
    #   deviations = [-0.66, -0.435, 0.215, 0.065, 0.815]
    #   var = (0.4356 + 0.189225 + 0.046225 + 0.004225 + 0.664225) / 5 = 1.3395 / 5 = 0.2679
    std = math.sqrt(0.2679)
    adv, ret = reinforce_pp(REWARDS_2, KL_2, MASK_2, None, group_size=1, gamma=0.5, lam=1.0)
    assert close(ret, [[0.025, 0.25, 0.9], [0.75, 1.5, 0.0]])
    expected = [[-0.66 / std, -0.435 / std, 0.215 / std], [0.065 / std, 0.815 / std, 0.0]]
    assert close(adv, expected)


def test_grpo_group_of_three_by_hand():
    rewards = t([1.0, 2.0, 6.0])
    kl = t([[0.0, 0.0, 0.0], [0.0, 0.0, 5.0], [1.0, 0.5, 0.5]])  # row 1's 5.0 is padding
    mask = t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    # scores = [1 - 0, 2 - 0, 6 - (1 + 0.5 + 0.5)] = [1, 2, 4]; mean = 7/3
    # deviations = [-4/3, -1/3, 5/3]
    # population variance = (16/9 + 1/9 + 25/9) / 3 = 42/27 = 14/9 ; std = sqrt(14)/3
    # A = deviation / std = [-4, -1, 5] / sqrt(14) = [-1.0690450, -0.2672612, 1.3363062]
    adv, ret = grpo(rewards, kl, mask, None, group_size=3, gamma=1.0, lam=1.0)
    a0, a1, a2 = -1.0690450, -0.2672612, 1.3363062
    assert close(adv, [[a0, a0, a0], [a1, a1, 0.0], [a2, a2, a2]], atol=1e-5)
    assert torch.equal(adv, ret)


def test_grpo_two_groups_by_hand():
    # group 0 scores [1, 3]: mean 2, population std 1 -> [-1, 1] / (1 + 1e-6)
    # group 1 scores [5, 5]: std 0 -> [0, 0] / (0 + 1e-6) = [0, 0]
    rewards = t([1.0, 3.0, 5.0, 5.0])
    kl = torch.zeros(4, 2, dtype=F64)
    mask = torch.ones(4, 2, dtype=F64)
    adv, _ = ADVANTAGE_ESTIMATORS.get("grpo")(rewards, kl, mask, None, group_size=2, gamma=1.0, lam=1.0)
    assert close(adv, [[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]], atol=1e-5)


def test_rloo_by_hand():
    # same group of three: scores [1, 2, 4], sum 7, group_size - 1 = 2
    # A0 = 1 - (7 - 1)/2 = -2 ; A1 = 2 - (7 - 2)/2 = -0.5 ; A2 = 4 - (7 - 4)/2 = 2.5
    rewards = t([1.0, 2.0, 6.0])
    kl = t([[0.0, 0.0, 0.0], [0.0, 0.0, 5.0], [1.0, 0.5, 0.5]])
    mask = t([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv, ret = rloo(rewards, kl, mask, None, group_size=3, gamma=1.0, lam=1.0)
    assert close(adv, [[-2.0, -2.0, -2.0], [-0.5, -0.5, 0.0], [2.5, 2.5, 2.5]])
    assert torch.equal(adv, ret)


def test_rloo_two_groups_by_hand():
    # group 0 [1, 3]: [1 - 3, 3 - 1] = [-2, 2]; group 1 [5, 5]: [0, 0]
    rewards = t([1.0, 3.0, 5.0, 5.0])
    adv, _ = rloo(rewards, torch.zeros(4, 1, dtype=F64), torch.ones(4, 1, dtype=F64), None, 2, 1.0, 1.0)
    assert close(adv, [[-2.0], [2.0], [0.0], [0.0]])


@pytest.mark.parametrize("name", ["grpo", "rloo"])
def test_group_size_must_divide_batch(name):
    fn = ADVANTAGE_ESTIMATORS.get(name)
    rewards, kl, mask = t([1.0, 2.0, 3.0, 4.0]), torch.zeros(4, 2), torch.ones(4, 2)
    with pytest.raises(ValueError, match="group_size=3"):
        fn(rewards, kl.double(), mask, None, 3, 1.0, 1.0)
    with pytest.raises(ValueError, match="group_size"):
        fn(rewards, kl.double(), mask, None, 1, 1.0, 1.0)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="rewards"):
        grpo(t([1.0, 2.0, 3.0]), torch.zeros(2, 2, dtype=F64), torch.ones(2, 2), None, 2, 1.0, 1.0)


def test_unknown_estimator_lists_choices():
    with pytest.raises(ConfigError) as info:
        ADVANTAGE_ESTIMATORS.get("ppo2")
    assert str(info.value) == (
        "algorithm.estimator='ppo2' is not a valid advantage estimator; "
        "choose one of: gae, grpo, reinforce_pp, rloo"
    )
    assert ADVANTAGE_ESTIMATORS.names() == ["gae", "grpo", "reinforce_pp", "rloo"]
