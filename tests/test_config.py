"""UpsampleGuidanceConfig: validated once on creation, frozen, and the short form's resolution.

Each bad value is a ValueError or TypeError that names the option, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import pytest
import torch

from ug_core import UpsampleGuidanceConfig, normalize_prediction, parse_factors, step_scale
from ug_core.config import resolve_config
from ug_core.schedules import as_times


def test_the_short_forms_normalise():
    assert UpsampleGuidanceConfig(factors=2).factors == (2, 2)
    assert UpsampleGuidanceConfig(factors="3/2").factors == (Fraction(3, 2), Fraction(3, 2))
    assert UpsampleGuidanceConfig(factors=[1, 2, 2]).factors == (1, 2, 2)
    gated = UpsampleGuidanceConfig(scale=step_scale(1.5, eta=0.6))
    assert (gated.scale, gated.eta) == (1.5, 0.6)
    assert UpsampleGuidanceConfig(scale=0.0).never_on and UpsampleGuidanceConfig(eta=0).never_on
    assert not UpsampleGuidanceConfig(scale=lambda f: 0.0).never_on  # a callable may switch on


@pytest.mark.parametrize(
    "option, value, error, message",
    [
        ("time_matching", "closest", ValueError,
         r"time_matching must be one of \('nearest', 'exact', 'off'\), got 'closest'"),
        ("below_range", "drop", ValueError,
         r"below_range must be one of \('clamp', 'skip', 'error'\), got 'drop'"),
        ("device_time", "sync", ValueError, r"device_time must be one of \('compute', 'read'\)"),
        ("mixed_times", "median", ValueError, r"mixed_times must be one of \('error', 'max'"),
        ("micro_conditioning", "mid", ValueError, r"micro_conditioning must be one of \('low'"),
        ("ratio_noise", "fresh", ValueError, r"ratio_noise must be one of \('top-up', 'whiten'"),
        ("match_power", 1, TypeError, r"match_power must be a bool, got 1"),
        ("eta", "0.5", TypeError, r"eta must be a real number in \[0, 1\], got str"),
        ("eta", 1.5, ValueError, r"eta must lie in \[0, 1\] \(the fraction of the time axis\)"),
        ("factors", (2, 0), ValueError, r"factors \(2, 0\): each entry must be a number >= 1"),
    ],
)  # fmt: skip
def test_each_bad_option_names_itself(option, value, error, message):
    with pytest.raises(error, match=message):
        UpsampleGuidanceConfig(**{option: value})


def test_eta_given_twice_is_refused():
    with pytest.raises(ValueError, match=r"eta is given twice: eta=0\.5 and scale="):
        UpsampleGuidanceConfig(scale=step_scale(1.0, eta=0.6), eta=0.5)


def test_frozen_and_replace_validates_again():
    config = UpsampleGuidanceConfig(factors=(2, 2), scale=1.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.scale = 2.0  # type: ignore[misc]
    assert config.replace(eta=0.5).eta == 0.5 and config.eta == 1.0
    with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
        config.replace(eta=2.0)


def test_resolve_config_takes_a_config_or_the_short_form_not_both():
    config = UpsampleGuidanceConfig(factors=(3, 3))
    assert resolve_config(config) is config
    assert resolve_config(None, factors=(3, 3), scale=None) == config  # None: not given
    with pytest.raises(TypeError, match=r"unknown option\(s\) sclae; the options are \('factors'"):
        resolve_config(None, sclae=1.0)
    with pytest.raises(TypeError, match=r"config must be an UpsampleGuidanceConfig, got dict"):
        resolve_config({"factors": (2, 2)})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"pass either config= or the options, not both: got "
                                         r"config and \['scale'\]"):  # fmt: skip
        resolve_config(config, scale=2.0)


def test_the_core_parsers_refuse_other_types():
    entry = r"factors \(2, None\): each entry must be a number >= 1: an integer, or a ratio p/q"
    with pytest.raises(TypeError, match=entry + r" .* got None \(NoneType\)"):
        UpsampleGuidanceConfig(factors=(2, None))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"factor must be a number or a sequence of numbers"):
        parse_factors(None, "factor")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"prediction must be a string, got int"):
        normalize_prediction(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"t must be a number or a tensor of times, got the bool"):
        as_times(True)
    with pytest.raises(TypeError, match=r"t must hold real numbers, got a tensor of dtype "
                                        r"torch\.bool"):  # fmt: skip
        as_times(torch.tensor([True]))
    with pytest.raises(TypeError, match=r"t must hold real numbers, got \['a'\]"):
        as_times(["a"])
    with pytest.raises(TypeError, match=r"t must be a number, a sequence or a tensor of times, "
                                        r"got object"):  # fmt: skip
        as_times(object())
