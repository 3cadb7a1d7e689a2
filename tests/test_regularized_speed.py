"""benchmarks/regularized_speed.py: its analytic FLOP count is the hand count, its synthetic codes
are the mixture it says, and its quick mode runs and reports what it promises."""

import numpy as np
import pytest

from benchmarks import regularized_speed as rs


def test_pythae_ae_flops_is_the_hand_count():
    # width 1, latent 1, batch 1; multiply-adds per layer, forward:
    # conv1 14*14*1*16 = 3136, conv2 7*7*2*16 = 1568, to_code 98, from_code 98,
    # up1 7*7*2*1*16 = 1568, up2 14*14*1*16 = 3136: 9604 in all.
    # Step: forward + kernel gradients (9604 each) + input gradients but conv1's (9604 - 3136).
    assert rs.pythae_ae_flops(batch=1, width=1, latent=1) == 2 * (9604 + 9604 + 9604 - 3136)
    # it scales with the batch
    assert rs.pythae_ae_flops(batch=128) == 128 * rs.pythae_ae_flops(batch=1)


def test_synthetic_codes_are_a_ten_component_mixture():
    codes = rs.synthetic_codes(4_000, d=16, k=10, seed=3)
    assert codes.shape == (4_000, 16) and codes.dtype == np.float32
    rng = np.random.default_rng(3)
    means = 3.0 * rng.standard_normal((10, 16))  # the function's first draw
    nearest = np.argmin(((codes[:, None] - means[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(nearest, minlength=10)
    assert (counts > 200).all()  # ~400 each: every component is drawn
    for j in range(10):
        np.testing.assert_allclose(codes[nearest == j].mean(0), means[j], atol=0.35)


def test_bad_models_option_names_the_choices():
    with pytest.raises(SystemExit):
        rs.parse_args(["--models", "ae,nope"])


def test_quick_run_reports_every_number():
    out = rs.main(["--quick", "--models", "ae", "--data", "random", "--repeats", "3"])
    (ae,) = out["models"]
    assert ae["model"] == "ae" and ae["ratio_to_ae"] == 1.0
    assert ae["s_per_epoch"] > 0 and ae["compile_s"] > 0
    # XLA's count: the analytic matmuls plus the transposed convolutions' overlapping patches
    assert ae["gflop_per_step_analytic"] < ae["gflop_per_step"] < 2 * ae["gflop_per_step_analytic"]
    assert 0 < ae["fraction_of_peak"] < 2
    assert ae["pythae_s_per_epoch"] == rs.PYTHAE_S["ae"]
    assert ae["speedup_vs_pythae"] == pytest.approx(rs.PYTHAE_S["ae"] / ae["s_per_epoch"], 2e-3)
    five, one, synthetic = out["gmm"]
    assert (five["restarts"], one["restarts"], synthetic["restarts"]) == (5, 1, 5)
    assert five["first_call_compiles"] and not synthetic["first_call_compiles"]
    assert len(five["em_iterations"]) == 5 and len(one["em_iterations"]) == 1
    assert five["encode_s"] > 0 and five["encode_plus_fit_s"] > five["s"]
    for g in out["gmm"]:
        assert g["n"] == 1_280 and g["dim"] == rs.LATENT_DIM
        assert g["s"] > 0 and isinstance(g["meets_5x"], bool)
