"""KL estimators and KL coefficient controllers, checked against hand-computed values."""

import pytest
import torch

from orchestrator.algorithms import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    Registry,
    make_kl_controller,
)
from orchestrator.errors import ConfigError

# Two tokens: logp = [-1.0, -2.0], ref_logp = [-1.5, -1.0]
LOGP = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
REF = torch.tensor([[-1.5, -1.0]], dtype=torch.float64)


def test_k1_by_hand():
    # logp - ref = [-1.0 + 1.5, -2.0 + 1.0] = [0.5, -1.0]
    out = KL_ESTIMATORS.get("k1")(LOGP, REF)
    assert torch.allclose(out, torch.tensor([[0.5, -1.0]], dtype=torch.float64))


def test_k2_by_hand():
    # 0.5 * [0.5**2, (-1.0)**2] = 0.5 * [0.25, 1.0] = [0.125, 0.5]
    out = KL_ESTIMATORS.get("k2")(LOGP, REF)
    assert torch.allclose(out, torch.tensor([[0.125, 0.5]], dtype=torch.float64))


def test_k3_by_hand():
    # x = ref - logp = [-0.5, 1.0]
    # exp(-0.5) - (-0.5) - 1 = 0.6065306597 + 0.5 - 1 = 0.1065306597
    # exp(1.0)  - 1.0    - 1 = 2.7182818285 - 2       = 0.7182818285
    out = KL_ESTIMATORS.get("k3")(LOGP, REF)
    expected = torch.tensor([[0.1065306597, 0.7182818285]], dtype=torch.float64)
    assert torch.allclose(out, expected, atol=1e-9)


def test_estimators_are_zero_when_policies_match():
    for name in ("k1", "k2", "k3"):
        assert torch.all(KL_ESTIMATORS.get(name)(LOGP, LOGP) == 0)


def test_kl_registry_names_and_unknown_name():
    assert KL_ESTIMATORS.names() == ["k1", "k2", "k3"]
    assert "k3" in KL_ESTIMATORS and "k4" not in KL_ESTIMATORS
    with pytest.raises(ConfigError) as info:
        KL_ESTIMATORS.get("k4")
    msg = str(info.value)
    assert msg == "algorithm.kl_estimator='k4' is not a valid KL estimator; choose one of: k1, k2, k3"
    assert "\n" not in msg


def test_registry_register_get_and_duplicate():
    reg = Registry("widget", "x.widget")

    @reg.register("b")
    def b():
        return "b"

    @reg.register("a")
    def a():
        return "a"

    assert reg.get("a") is a and reg.get("b")() == "b"
    assert reg.names() == ["a", "b"]
    with pytest.raises(ValueError):
        reg.register("a")(lambda: None)
    with pytest.raises(ConfigError, match=r"^x\.widget='c' is not a valid widget; choose one of: a, b$"):
        reg.get("c")


def test_fixed_controller_never_moves():
    ctl = FixedKLController(0.1)
    ctl.update(current_kl=100.0, n_steps=64)
    ctl.update(current_kl=0.0, n_steps=64)
    assert ctl.coef == 0.1
    assert ctl.state_dict() == {"coef": 0.1}


def test_adaptive_controller_by_hand():
    ctl = AdaptiveKLController(init_coef=0.2, target=6.0, horizon=100)
    # step 1: kl=9.0 -> 9/6 - 1 = 0.5 -> clipped to 0.2; coef = 0.2 * (1 + 0.2 * 10/100) = 0.2 * 1.02
    ctl.update(current_kl=9.0, n_steps=10)
    assert ctl.coef == pytest.approx(0.204)
    # step 2: kl=6.6 -> 6.6/6 - 1 = 0.1 (inside the clip); coef = 0.204 * (1 + 0.1 * 10/100) = 0.204 * 1.01
    ctl.update(current_kl=6.6, n_steps=10)
    assert ctl.coef == pytest.approx(0.20604)
    # step 3: kl=0.0 -> 0/6 - 1 = -1 -> clipped to -0.2; coef = 0.20604 * (1 - 0.2 * 50/100) = 0.20604 * 0.9
    ctl.update(current_kl=0.0, n_steps=50)
    assert ctl.coef == pytest.approx(0.185436)


def test_adaptive_controller_state_round_trip():
    ctl = AdaptiveKLController(0.2, 6.0, 100)
    ctl.update(9.0, 10)
    restored = AdaptiveKLController(0.2, 6.0, 100)
    restored.load_state_dict(ctl.state_dict())
    assert restored.coef == ctl.coef
    fixed = FixedKLController(0.5)
    fixed.load_state_dict({"coef": 0.25})
    assert fixed.coef == 0.25


def test_make_kl_controller():
    fixed = make_kl_controller(0.1, None, 100)
    assert isinstance(fixed, FixedKLController) and fixed.coef == 0.1
    adaptive = make_kl_controller(0.1, 6.0, 100)
    assert isinstance(adaptive, AdaptiveKLController)
    assert (adaptive.coef, adaptive.target, adaptive.horizon) == (0.1, 6.0, 100)


def test_adaptive_controller_rejects_bad_settings():
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, 0.0, 100)
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, 6.0, 0)
