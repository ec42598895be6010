"""The operators D (block mean) and U (nearest upsampling): algebra, shapes, dtypes, errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ug_core import block_size, downsample, normalize_factors, upsample

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@st.composite
def layouts(draw, max_axes=3):
    """(factors, low-resolution trailing shape) for 1, 2 or 3 axes."""
    n = draw(st.integers(1, max_axes))
    factors = tuple(draw(st.integers(1, 4)) for _ in range(n))
    low = tuple(draw(st.integers(1, 4)) for _ in range(n))
    return factors, low


def _rand(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    spread = 4.0 if dtype in (torch.float32, torch.float64) else 1.5  # stay finite in fp16
    scale = torch.exp(torch.randn(shape, generator=g, dtype=torch.float64) * spread)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


@settings(max_examples=150, deadline=None)
@given(layouts(), st.sampled_from(DTYPES), st.integers(0, 2**31 - 1))
def test_down_of_up_is_identity_exactly(layout, dtype, seed):
    factors, low = layout
    y = _rand((2, 3, *low), dtype, seed)
    assert torch.equal(downsample(upsample(y, factors), factors), y)


@settings(max_examples=100, deadline=None)
@given(layouts(), st.sampled_from(DTYPES), st.integers(0, 2**31 - 1))
def test_up_down_is_idempotent_exactly(layout, dtype, seed):
    factors, low = layout
    high = tuple(n * f for n, f in zip(low, factors, strict=True))
    x = _rand((2, *high), dtype, seed)
    once = upsample(downsample(x, factors), factors)
    assert torch.equal(upsample(downsample(once, factors), factors), once)


@settings(max_examples=100, deadline=None)
@given(layouts(), st.floats(-3, 3), st.floats(-3, 3), st.integers(0, 2**31 - 1))
def test_both_are_linear(layout, alpha, beta, seed):
    factors, low = layout
    high = tuple(n * f for n, f in zip(low, factors, strict=True))
    x1, x2 = _rand((2, *high), torch.float64, seed), _rand((2, *high), torch.float64, seed + 1)
    y1, y2 = _rand((2, *low), torch.float64, seed + 2), _rand((2, *low), torch.float64, seed + 3)
    d = downsample(alpha * x1 + beta * x2, factors)
    d_ref = alpha * downsample(x1, factors) + beta * downsample(x2, factors)
    scale = x1.abs().max() + x2.abs().max()
    torch.testing.assert_close(d, d_ref, rtol=0, atol=1e-12 * float(scale) * 8)
    u = upsample(alpha * y1 + beta * y2, factors)
    torch.testing.assert_close(
        u, alpha * upsample(y1, factors) + beta * upsample(y2, factors), rtol=0, atol=0
    )


@settings(max_examples=60, deadline=None)
@given(layouts(), st.integers(0, 2**31 - 1))
def test_down_is_up_transpose_over_k(layout, seed):
    """<D x, y> = <x, U y> / k: D = Uᵀ/k."""
    factors, low = layout
    high = tuple(n * f for n, f in zip(low, factors, strict=True))
    x, y = _rand(high, torch.float64, seed), _rand(low, torch.float64, seed + 1)
    lhs = (downsample(x, factors) * y).sum()
    rhs = (x * upsample(y, factors)).sum() / math.prod(factors)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=1e-10 * float(x.abs().max()))


def test_block_mean_values_by_hand():
    x = torch.arange(24, dtype=torch.float64).reshape(1, 4, 6)
    d = downsample(x, (2, 3))
    rows = [[0 + 1 + 2 + 6 + 7 + 8, 3 + 4 + 5 + 9 + 10 + 11],
            [12 + 13 + 14 + 18 + 19 + 20, 15 + 16 + 17 + 21 + 22 + 23]]  # fmt: skip
    expected = torch.tensor([rows], dtype=torch.float64) / 6
    torch.testing.assert_close(d, expected, rtol=0, atol=1e-14)
    u = upsample(torch.tensor([[1.0, 2.0]]), (3,))
    assert torch.equal(u, torch.tensor([[1.0, 1.0, 1.0, 2.0, 2.0, 2.0]]))


@pytest.mark.parametrize(
    "shape, factors, low",
    [
        ((2, 3, 12), (2,), (2, 3, 6)),  # 1-D sequences
        ((2, 3, 12, 18), (2, 3), (2, 3, 6, 6)),  # 2-D images, anisotropic
        ((2, 4, 8, 6, 6), (2, 1, 1), (2, 4, 4, 6, 6)),  # video, frames only
        ((2, 4, 8, 6, 6), (2, 2, 2), (2, 4, 4, 3, 3)),  # video, frames and pixels
        ((2, 4, 8, 6, 6), (1, 2, 3), (2, 4, 8, 3, 2)),
    ],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_shapes_and_dtypes(shape, factors, low, dtype):
    x = torch.randn(shape).to(dtype)
    d = downsample(x, factors)
    assert d.shape == low and d.dtype == dtype and d.device == x.device
    u = upsample(d, factors)
    assert u.shape == shape and u.dtype == dtype


def test_half_precision_mean_is_accurate():
    x = (torch.randn(4, 64, 64) * 100).to(torch.float16)
    ref = downsample(x.double(), (4, 4)).to(torch.float16)
    assert torch.equal(downsample(x, (4, 4)), ref)


def test_factor_normalisation_and_k():
    assert normalize_factors(2) == (2,)
    assert normalize_factors([2, 3]) == (2, 3)
    assert block_size((2, 3)) == 6 and block_size((2, 1, 1)) == 2 and block_size((2, 2, 2)) == 8


@pytest.mark.parametrize(
    "factors, exc, match",
    [
        ((2, 0), ValueError, r"factors \(2, 0\): each entry must be a number >= 1.*got 0 \(< 1\)"),
        ((2, -1), ValueError, r"got -1"),
        ((True, 2), TypeError, r"got the bool True"),
        ((), ValueError, r"at least one axis"),
        ("22", TypeError, r"factors must be a number or a sequence of numbers.*got '22'"),
        (1.33, ValueError, r"got 1\.33, which is not one; the nearest such ratio is 4/3"),
        (("17/16",), ValueError, r"denominator 16 exceeds 8"),
        (float("nan"), ValueError, r"got nan"),
        (float("inf"), ValueError, r"got inf"),
        (0.5, ValueError, r"got 0\.5 \(< 1\)"),
    ],
)
def test_bad_factors(factors, exc, match):
    with pytest.raises(exc, match=match):
        downsample(torch.zeros(1, 4, 4), factors)


def test_sizes_not_divisible():
    with pytest.raises(ValueError, match=r"trailing sizes \(5, 6\).*5 % 2 = 1"):
        downsample(torch.zeros(1, 5, 6), (2, 2))
    with pytest.raises(ValueError, match=r"6 % 4 = 2"):
        downsample(torch.zeros(1, 8, 6), (2, 4))


def test_check_divisible_names_the_sizes_and_the_nearest_multiples():
    from ug_core import check_divisible

    check_divisible((1, 3, 64, 96), (2, 3))  # divisible: no error
    with pytest.raises(ValueError) as err:
        check_divisible((64, 64), (3, 3), "--size 64x64")
    assert str(err.value) == (
        "--size 64x64 has sizes (64, 64) that the factors (3, 3) do not divide (64 % 3 = 1: use "
        "63 or 66); choose sizes that are multiples of the factors"
    )
    with pytest.raises(ValueError, match=r"trailing sizes \(1, 6\) .* \(1 % 2 = 1: use 2\)"):
        check_divisible((3, 1, 6), (2, 2), "x")  # 0 is no size


def test_more_factors_than_axes():
    with pytest.raises(ValueError, match=r"3 factors \(2, 2, 2\) given for x with only 2 axes"):
        downsample(torch.zeros(4, 4), (2, 2, 2))
    with pytest.raises(ValueError, match=r"3 factors \(2, 2, 2\) given for a tensor with only 2"):
        upsample(torch.zeros(4, 4), (2, 2, 2))
