"""One check and one message per kind of bad value, whichever function receives it."""

from __future__ import annotations

import math

import numpy as np
import pytest

import nearopt as no
from nearopt.dynamics import ode, predict, sgd, sgd_predict
from nearopt.errors import NearoptError
from nearopt.policy import decide_rank

BAD_POSITIVE = [0.0, -1.0, math.nan, math.inf, "0.1", None, True, 1j]

#: every public entry point that takes a learning rate, with valid other arguments
LEARNING_RATE_TAKERS = {
    "check_step_size": lambda lr: predict.check_step_size(lr, 1.0),
    "predict_mean_loss": lambda lr: predict.predict_mean_loss(np.array([1.0]), 1.0, lr, np.array([0, 1])),
    "stationary_factor": lambda lr: sgd_predict.stationary_factor(np.array([1.0]), np.array([1]), lr, 1),
    "committee_ode": lambda lr: ode.committee_ode(no.sample_teacher(2, 2, "erf", seed=0), lr),
    "simulate_sgd": lambda lr: sgd.simulate_sgd(no.sample_teacher(2, 2, "erf", seed=0), lr=lr, batch=1, sigma0=0.1, runs=1, steps=1),
}


@pytest.mark.parametrize("taker", sorted(LEARNING_RATE_TAKERS))
@pytest.mark.parametrize("lr", BAD_POSITIVE, ids=repr)
def test_a_bad_learning_rate_gets_one_message_everywhere(taker, lr):
    with pytest.raises(NearoptError, match=r"^learning rate must be a finite number > 0, got "):
        LEARNING_RATE_TAKERS[taker](lr)


@pytest.mark.parametrize("value", [v for v in BAD_POSITIVE if v is not None], ids=repr)  # None: the default scale
def test_weight_scales_and_tolerances_share_the_message(value):
    with pytest.raises(NearoptError, match=r"^sigma1 must be a finite number > 0"):
        no.sample_teacher(2, 2, "erf", sigma1=value, seed=0)
    with pytest.raises(NearoptError, match=r"^rtol must be a finite number > 0"):
        decide_rank(np.array([1.0, 0.5]), 2, rtol=value)


def test_valid_values_pass_as_floats():
    predict.check_step_size(0.5, 1.0)
    assert ode.committee_ode(no.sample_teacher(2, 2, "erf", seed=0), 0.5) is not None
