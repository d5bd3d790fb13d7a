"""AI-feedback labels (orchestrator/algorithms/feedback.py), checked against numbers computed by hand.

Inputs are ``[N, 2]`` log-probs of the letters (A, B); "in order" asks with (A) = first response,
"swapped" asks with (A) = second response."""

from __future__ import annotations

import math

import pytest
import torch

from orchestrator.algorithms.feedback import first_preferred_probability, option_probabilities, position_agreement


def logps(*rows):
    """``[N, K]`` log-probs from rows of (possibly un-normalised) probabilities."""
    return torch.tensor([[math.log(p) for p in row] for row in rows])


def close(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=0)


def test_option_probabilities_normalised_input():
    """log(0.8), log(0.2) -> 0.8, 0.2; float32 output of shape [N, K]."""
    probs = option_probabilities(logps((0.8, 0.2), (0.5, 0.5)))
    assert probs.dtype == torch.float32 and probs.shape == (2, 2)
    close(probs, [[0.8, 0.2], [0.5, 0.5]])


def test_option_probabilities_unnormalised_input():
    """Log-probs of the letters need not sum to 1 over the options (the model puts mass on other tokens):
    0.4 and 0.1 -> 0.4/0.5 = 0.8 and 0.1/0.5 = 0.2; 0.03 and 0.01 -> 0.75, 0.25; three options
    0.1, 0.2, 0.1 -> 0.25, 0.5, 0.25."""
    close(option_probabilities(logps((0.4, 0.1), (0.03, 0.01))), [[0.8, 0.2], [0.75, 0.25]])
    close(option_probabilities(logps((0.1, 0.2, 0.1))), [[0.25, 0.5, 0.25]])


def test_option_probabilities_shift_and_dtype():
    """Adding a constant to a row changes nothing (log(8), log(2) -> 0.8, 0.2); bfloat16 in, float32 out."""
    close(option_probabilities(logps((8.0, 2.0)) - 100.0), [[0.8, 0.2]])
    probs = option_probabilities(torch.tensor([[0.0, 0.0]], dtype=torch.bfloat16))
    assert probs.dtype == torch.float32
    close(probs, [[0.5, 0.5]])


def test_first_preferred_mean_of_both_orders():
    """In order P(A) = 0.8, swapped P(B) = 0.6 -> (0.8 + 0.6) / 2 = 0.7."""
    close(first_preferred_probability(logps((0.8, 0.2)), logps((0.4, 0.6))), [0.7])


def test_first_preferred_unnormalised_batch():
    """Row 1: in order 0.4, 0.1 -> P(A) = 0.8; swapped 0.02, 0.03 -> P(B) = 0.6; p = 0.7.
    Row 2: in order 0.1, 0.3 -> P(A) = 0.25; swapped 0.6, 0.2 -> P(B) = 0.25; p = 0.25."""
    p = first_preferred_probability(logps((0.4, 0.1), (0.1, 0.3)), logps((0.02, 0.03), (0.6, 0.2)))
    assert p.shape == (2,)
    close(p, [0.7, 0.25])


def test_always_a_model_is_position_biased():
    """A model that says "A" with 0.9 whatever the order: P(A) = 0.9 in order, P(B) = 0.1 swapped,
    p = (0.9 + 0.1) / 2 = 0.5, and the two orders pick different responses (agreement False)."""
    in_order, swapped = logps((0.9, 0.1)), logps((0.9, 0.1))
    close(first_preferred_probability(in_order, swapped), [0.5])
    assert position_agreement(in_order, swapped).tolist() == [False]


def test_always_a_with_different_confidence():
    """Always "A", but 0.9 in order and 0.7 swapped: p = (0.9 + 0.3) / 2 = 0.6 (the bias is not fully
    cancelled), still agreement False."""
    in_order, swapped = logps((0.9, 0.1)), logps((0.7, 0.3))
    close(first_preferred_probability(in_order, swapped), [0.6])
    assert position_agreement(in_order, swapped).tolist() == [False]


def test_position_agreement_consistent_model():
    """Row 1 prefers the first response in both orders (A then B); row 2 prefers the second in both
    (B then A); row 3 says "B" both times (biased). Un-normalised values give the same answer."""
    in_order = logps((0.8, 0.2), (0.3, 0.7), (0.1, 0.9))
    swapped = logps((0.4, 0.6), (0.9, 0.1), (0.2, 0.8))
    assert position_agreement(in_order, swapped).tolist() == [True, True, False]
    assert position_agreement(in_order - 3.0, swapped + 1.5).tolist() == [True, True, False]


def test_position_agreement_ties():
    """A tie counts as picking the first response: tie in both orders -> agreement True; tie in order
    with the swapped question picking (A) = second response -> False."""
    tie = logps((0.5, 0.5))
    assert position_agreement(tie, tie).tolist() == [True]
    assert position_agreement(tie, logps((0.9, 0.1))).tolist() == [False]
    assert position_agreement(tie, logps((0.1, 0.9))).tolist() == [True]


IN_ORDER = logps((0.8, 0.2), (0.4, 0.1), (0.9, 0.1), (0.3, 0.7))
SWAPPED = logps((0.4, 0.6), (0.02, 0.03), (0.9, 0.1), (0.6, 0.4))


def test_swapping_the_responses_gives_one_minus_p():
    """Swapping the two responses turns the in-order question into the swapped one and vice versa
    (same letter columns), so P(first preferred) becomes 1 - p: 0.7 -> 0.3, 0.7 -> 0.3, 0.5 -> 0.5,
    and row 4 (P(A) = 0.3, P(B) = 0.4 -> 0.35) -> 0.65. Position agreement does not change (no ties)."""
    p = first_preferred_probability(IN_ORDER, SWAPPED)
    close(p, [0.7, 0.7, 0.5, 0.35])
    close(first_preferred_probability(SWAPPED, IN_ORDER), [0.3, 0.3, 0.5, 0.65])
    assert position_agreement(IN_ORDER, SWAPPED).tolist() == [True, True, False, True]
    assert position_agreement(SWAPPED, IN_ORDER).tolist() == [True, True, False, True]


def test_flipping_letter_columns():
    """Exchanging the letters' columns in both inputs also gives 1 - p; exchanging the inputs *and*
    flipping the columns gives p back (the two changes cancel)."""
    p = first_preferred_probability(IN_ORDER, SWAPPED)
    close(first_preferred_probability(IN_ORDER.flip(-1), SWAPPED.flip(-1)), (1 - p).tolist())
    close(first_preferred_probability(SWAPPED.flip(-1), IN_ORDER.flip(-1)), p.tolist())


@pytest.mark.parametrize("p_a,p_b_swapped", [(0.8, 0.6), (0.55, 0.95), (0.05, 0.2)])
def test_probability_in_unit_interval(p_a, p_b_swapped):
    """p = (P(A) + P(B swapped)) / 2 for a range of confidences, always within [0, 1]."""
    p = first_preferred_probability(logps((p_a, 1 - p_a)), logps((1 - p_b_swapped, p_b_swapped)))
    close(p, [(p_a + p_b_swapped) / 2])
    assert 0.0 <= p.item() <= 1.0
