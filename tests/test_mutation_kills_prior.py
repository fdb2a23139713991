"""Tests that kill mutants of the prior (opmask_fast/ops/prior_weight.py, opmask_fast/modeling/roi_heads/prior.py)
which survived the other tests in scripts/mutation.py's run (docs/mutation.md). Each docstring names the mutant(s):
``file:line  cosmic-ray operator``, and the mutated code."""

import pytest
import torch

from opmask_fast.ops.prior_weight import PriorWeight, parse_prior_scale


def test_a_text_that_is_no_number_gets_the_options_message():
    """prior_weight.py:40 ExceptionReplacer: ``except (TypeError, ValueError)`` -> ``except (TypeError, <other>)``
    (float("abc")'s own ValueError would escape without naming the option and the known modes)."""
    with pytest.raises(ValueError, match=r"--prior-scale must be one of none, learnable, .* got 'abc'"):
        parse_prior_scale("abc", name="--prior-scale")
    with pytest.raises(ValueError, match="must be one of"):
        parse_prior_scale(None)  # TypeError, caught the same way
    with pytest.raises(ValueError, match="must be one of"):
        parse_prior_scale(True)  # a bool is no gain


def test_fusable_only_without_grad_scale_adaptive_gain_or_pending_init():
    """prior_weight.py:93 ReplaceComparisonOperator_Is_IsNot: ``self.grad_scale is None`` -> ``is not None`` (a
    weight with a gradient scale would ride on RoIAlign's write, which cannot scale the gradient)."""
    assert PriorWeight(scale=2.0).fusable
    assert PriorWeight(scale="none").fusable
    assert not PriorWeight(scale=2.0, grad_scale=0.5).fusable
    assert not PriorWeight(scale="none", grad_scale=0.0).fusable
    assert not PriorWeight(scale="feature_std").fusable
    assert PriorWeight(scale="feature_std").fusable_in_roi_align  # RoIAlign reads the weight off its own output
    assert not PriorWeight(scale="feature_range", grad_scale=0.0).fusable_in_roi_align
    assert not PriorWeight(scale="learnable").train().fusable_in_roi_align
    assert not PriorWeight(scale="learnable").train().fusable  # measured on the first batch first
    assert PriorWeight(scale="learnable", init=2.0).train().fusable


def test_feature_std_gain_of_a_single_value_roi_is_zero():
    """reference/roi_align.py map_gain: the std of a one-element RoI is NaN, and so is the gain of a RoI with a NaN
    feature; both must become 0 (no prior), not 1 (``nan_to_num(gain, nan=0.0)`` -> ``nan=1.0``) or NaN."""
    feats, prior = torch.randn(3, 1, 1, 1), torch.rand(3, 1, 1)
    gain = PriorWeight(scale="feature_std").per_roi(feats, prior)
    assert gain.shape == (3, 1, 1, 1) and gain.eq(0).all()
    feats = torch.randn(3, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    feats[1, 0, 0, 0] = float("nan")
    gain = PriorWeight(scale="feature_std").per_roi(feats, torch.rand(3, 2, 2)).flatten()
    assert gain[1] == 0 and (gain[[0, 2]] > 0).all()


def _learnable():
    pw = PriorWeight(scale="learnable").train()
    assert pw.needs_init() and float(pw.gain) == 1.0
    return pw


def test_learnable_gain_is_measured_as_the_std_ratio():
    """prior_weight.py:133 ReplaceBinaryOperator_Div_Sub (std / std -> std - std), :134 NumberReplacer
    (``stats[1] = 1.0`` -> ``2.0``), :139 ReplaceBinaryOperator_Div_Add (``stats[0] / stats[1]`` -> ``+``): the start
    gain is exactly std(mask features) / std(prior)."""
    torch.manual_seed(0)
    feats, prior = 3.0 * torch.randn(4, 8, 14, 14), torch.rand(4, 14, 14)
    pw = _learnable()
    pw.initialize(feats, prior)
    expected = float(feats.std() / prior.std())
    assert float(pw.gain) == pytest.approx(expected, rel=1e-5)
    assert bool(pw.initialized) and not pw.needs_init()


def test_learnable_gain_without_rois_stays_unmeasured():
    """prior_weight.py:132 ReplaceAndWithOr: ``... and prior is not None and prior.numel() > 0`` ->
    ``... and prior is not None or prior.numel() > 0`` (no RoI: None, or an empty batch, must leave the gain
    unmeasured for the next step, not set it from the NaN std of nothing)."""
    pw = _learnable()
    pw.initialize(None, None)
    assert pw.needs_init() and float(pw.gain) == 1.0
    pw.initialize(torch.randn(0, 8, 14, 14), torch.rand(0, 14, 14))
    assert pw.needs_init() and float(pw.gain) == 1.0


def test_only_the_learnable_mode_has_a_parameter():
    """prior_weight.py:80 ReplaceComparisonOperator_Eq_LtE: ``self.mode == "learnable"`` -> ``<=`` ("feature_*" and
    "fixed" sort before "learnable": they would get a gain parameter and an ``initialized`` buffer, and checkpoints
    keys that the model does not have)."""
    for scale in (2.0, "none", "feature_std", "feature_range"):
        pw = PriorWeight(scale=scale)
        assert list(pw.state_dict()) == [] and list(pw.parameters()) == [], scale
    assert list(PriorWeight(scale="learnable").state_dict()) == ["gain", "initialized"]


def test_extra_repr_names_mode_value_and_grad_scale():
    """prior_weight.py:143 ReplaceComparisonOperator_IsNot_Is: ``if self.fixed is not None`` -> ``is None``."""
    assert PriorWeight(scale=2.5).extra_repr() == "mode=fixed, value=2.5"
    assert PriorWeight(scale="none").extra_repr() == "mode=none"
    assert PriorWeight(scale="feature_std", grad_scale=0.5).extra_repr() == "mode=feature_std, grad_scale=0.5"


@pytest.mark.parametrize("mode", ["abc", "zzz", "Shuffle"])
def test_ablate_prior_refuses_an_unknown_mode(mode):
    """prior.py:40 ReplaceComparisonOperator_Eq_GtE: ``if mode == "zero"`` -> ``>=``, and prior.py:42
    ReplaceComparisonOperator_Eq_GtE: ``if mode == "shuffle"`` -> ``>=`` (and their <= / < / > siblings): a mode that
    sorts after (or before) "zero" / "shuffle" would be zeroed or shuffled instead of refused."""
    from opmask_fast.modeling.roi_heads.prior import ablate_prior

    with pytest.raises(ValueError, match="prior ablation must be None or one of zero, shuffle"):
        ablate_prior(torch.rand(3, 2, 2), mode)


def test_the_default_shuffle_is_seed_0s():
    """prior.py:35 NumberReplacer: ``seed: int = 0`` -> ``seed: int = 1``. ``prior_ablation`` (the evaluation's
    shuffle ablation) calls ``ablate_prior`` with the default seed: the reported shuffle numbers are seed 0's, and
    another default would silently change them."""
    from opmask_fast.modeling.roi_heads.prior import ablate_prior

    prior = torch.arange(6 * 2 * 2, dtype=torch.float32).view(6, 2, 2)
    assert torch.equal(ablate_prior(prior, "shuffle"), ablate_prior(prior, "shuffle", seed=0))
    assert not torch.equal(ablate_prior(prior, "shuffle"), ablate_prior(prior, "shuffle", seed=1))


def test_options_are_keyword_only():
    """prior_weight.py:74 and prior.py:35 ReplaceBinaryOperator_Mul_Div: ``*,`` -> ``/,`` (the options become
    positional: ``PriorWeight("feature_std")`` or ``ablate_prior(p, "shuffle", 3)`` would be accepted)."""
    import inspect

    from opmask_fast.modeling.roi_heads.prior import ablate_prior

    kinds = inspect.signature(PriorWeight.__init__).parameters
    assert all(kinds[n].kind is inspect.Parameter.KEYWORD_ONLY for n in ("scale", "init", "grad_scale"))
    assert inspect.signature(ablate_prior).parameters["seed"].kind is inspect.Parameter.KEYWORD_ONLY


def test_shuffle_gives_each_roi_the_prior_of_the_next_in_the_drawn_order():
    """prior.py:48 ReplaceUnaryOperator_USub_UAdd: ``order.roll(-1)`` -> ``roll(+1)`` (another derangement than the
    documented one: RoI order[i] takes the prior of order[i + 1])."""
    from opmask_fast.modeling.roi_heads.prior import ablate_prior

    prior = torch.arange(6, dtype=torch.float32).view(6, 1, 1).expand(6, 2, 2).contiguous()
    order = torch.randperm(6, generator=torch.Generator().manual_seed(4))
    out = ablate_prior(prior, "shuffle", seed=4)
    for i in range(6):
        assert torch.equal(out[order[i]], prior[order[(i + 1) % 6]])


def test_prior_statistics_read_the_mask_features_and_the_prior_map():
    """prior.py:92 NumberReplacer: ``roi_statistics(args[0], prior_map)`` -> ``args[1]`` (the feature statistics
    would be the prior map's)."""
    from types import SimpleNamespace

    from opmask_fast.modeling.roi_heads.prior import PriorTap, prior_statistics

    tap = PriorTap()
    features = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(0)) * 7.0
    prior_map = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(1))
    with prior_statistics(SimpleNamespace(prior_tap=tap)) as records:
        tap(features, prior_map)
    torch.testing.assert_close(records[0]["feature_std"], features.flatten(1).std(dim=1))
    torch.testing.assert_close(records[0]["prior_std"], prior_map.flatten(1).std(dim=1))
