"""The operators D (block mean) and U (nearest upsampling): algebra, shapes, dtypes, errors."""

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ug_core import block_size, downsample, normalize_factors, unwhiten, upsample, whiten
from ug_core.factors import low_sizes

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


# ---------------------------------------------------------------- fractional factors p/q
RATIOS = [Fraction(3, 2), Fraction(4, 3), Fraction(5, 4), Fraction(5, 3), Fraction(9, 8), 2, 1]


@st.composite
def fractional_layouts(draw, max_axes=3):
    """(factors with at least one ratio, high-resolution trailing shape) for 1 to 3 axes."""
    n = draw(st.integers(1, max_axes))
    factors = [draw(st.sampled_from(RATIOS)) for _ in range(n)]
    factors[draw(st.integers(0, n - 1))] = draw(st.sampled_from(RATIOS[:5]))
    high = tuple(Fraction(f).numerator * draw(st.integers(1, 3)) for f in factors)
    return tuple(factors), high


@settings(max_examples=120, deadline=None)
@given(fractional_layouts(), st.integers(0, 2**31 - 1))
def test_fractional_down_is_linear_and_keeps_the_mean(layout, seed):
    factors, high = layout
    x1, x2 = _rand((2, *high), torch.float64, seed), _rand((2, *high), torch.float64, seed + 1)
    alpha, beta = 0.7, -1.3
    d = downsample(alpha * x1 + beta * x2, factors)
    scale = float(x1.abs().max() + x2.abs().max())
    ref = alpha * downsample(x1, factors) + beta * downsample(x2, factors)
    torch.testing.assert_close(d, ref, rtol=0, atol=1e-12 * scale)
    axes = tuple(range(-len(factors), 0))
    torch.testing.assert_close(
        downsample(x1, factors).mean(axes), x1.mean(axes), rtol=0, atol=1e-12 * scale
    )
    const = torch.full((1, *high), 2.5, dtype=torch.float64)  # a constant stays itself
    torch.testing.assert_close(downsample(const, factors), torch.full_like(d[:1], 2.5))


@settings(max_examples=120, deadline=None)
@given(fractional_layouts(), st.integers(0, 2**31 - 1))
def test_fractional_down_of_up_is_identity_and_up_down_a_projector(layout, seed):
    factors, high = layout
    low = low_sizes(high, factors)
    y = _rand((2, 3, *low), torch.float64, seed)
    scale = float(y.abs().max())
    torch.testing.assert_close(
        downsample(upsample(y, factors), factors), y, rtol=0, atol=1e-12 * scale
    )
    x = _rand((2, *high), torch.float64, seed + 1)
    once = upsample(downsample(x, factors), factors)
    twice = upsample(downsample(once, factors), factors)
    torch.testing.assert_close(twice, once, rtol=0, atol=1e-12 * float(x.abs().max()))
    # U∘D is the orthogonal projector: the residual x − U D x is orthogonal to everything D keeps
    residual = x - once
    torch.testing.assert_close(
        downsample(residual, factors), torch.zeros_like(downsample(x, factors)), rtol=0,
        atol=1e-12 * float(x.abs().max()),
    )  # fmt: skip


def test_fractional_area_mean_by_hand():
    """3/2: coarse cells [0, 1.5) and [1.5, 3) of fine cells 0, 1, 2 (weights 2/3, 1/3)."""
    x = torch.tensor([[3.0, 6.0, 9.0, 12.0, 15.0, 18.0]], dtype=torch.float64)
    d = downsample(x, (Fraction(3, 2),))
    expected = torch.tensor([[2 / 3 * 3 + 1 / 3 * 6, 1 / 3 * 6 + 2 / 3 * 9,
                              2 / 3 * 12 + 1 / 3 * 15, 1 / 3 * 15 + 2 / 3 * 18]])  # fmt: skip
    torch.testing.assert_close(d, expected.double(), rtol=0, atol=1e-14)
    d43 = downsample(torch.arange(4.0, dtype=torch.float64)[None], ("4/3",))  # thirds: 3/4, 1/4
    torch.testing.assert_close(
        d43, torch.tensor([[0.25, 1.5, 2.75]], dtype=torch.float64), rtol=0, atol=1e-14
    )


@pytest.mark.parametrize(
    "factors, size",
    [((Fraction(3, 2),) * 2, (12, 12)), ((Fraction(4, 3), 2), (12, 12)), ((1, "5/4"), (4, 20))],
)
def test_whitened_noise_is_white_with_variance_one_over_k(factors, size):
    """W·D[ε] has covariance I/k (k the area ratio), unlike D[ε] for a ratio (docs/maths.md)."""
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(40000, *size, generator=g, dtype=torch.float64)
    low = whiten(downsample(eps, factors), factors).flatten(1)
    cov = low.T @ low / low.shape[0]
    k = float(block_size(factors))
    # 40000 samples: each covariance entry has a standard error of about 1/(k·200)
    torch.testing.assert_close(cov, torch.eye(cov.shape[0], dtype=torch.float64) / k, rtol=0,
                               atol=6 / (k * 200))  # fmt: skip
    plain = downsample(eps, factors).flatten(1)
    assert (plain.T @ plain / plain.shape[0] - torch.eye(cov.shape[0]) / k).abs().max() > 0.05


@pytest.mark.parametrize("factors", [(2, 2), (2, 1, 1)])
def test_whitening_is_the_identity_for_integer_factors(factors):
    y = torch.randn(2, 3, 4, 4, 4)
    assert whiten(y, factors) is y and unwhiten(y, factors) is y


def test_unwhiten_inverts_whiten():
    y = torch.randn(2, 3, 6, 9, dtype=torch.float64)
    factors = (Fraction(3, 2), Fraction(4, 3))
    torch.testing.assert_close(unwhiten(whiten(y, factors), factors), y, rtol=0, atol=1e-12)


def test_fractional_shapes_dtypes_and_errors():
    x = torch.randn(2, 4, 12, 15).to(torch.float16)
    d = downsample(x, (Fraction(3, 2), Fraction(5, 4)))
    assert d.shape == (2, 4, 8, 12) and d.dtype == torch.float16
    assert upsample(d, (Fraction(3, 2), Fraction(5, 4))).shape == x.shape
    with pytest.raises(ValueError, match=r"\(13,\) that the factors \(3/2,\) do not map to whole "
                                         r"sizes \(13 % 3 = 1: use 12 or 15\)"):  # fmt: skip
        downsample(torch.zeros(1, 13), ("3/2",))
    with pytest.raises(ValueError, match=r"a factor p/q needs multiples of q"):
        upsample(torch.zeros(1, 5), (Fraction(3, 2),))
    with pytest.raises(ValueError, match=r"\(8,\) that the factors \(3,\) do not divide"):
        whiten(torch.zeros(1, 8), (Fraction(4, 3),))


def test_parse_factors_forms():
    from ug_core import parse_factors

    half = Fraction(3, 2)
    assert parse_factors(2) == (2, 2) and parse_factors("2") == (2, 2)
    assert parse_factors(1.5) == (half, half) and parse_factors("3/2") == (half, half)
    assert parse_factors("2x3") == (2, 3) and parse_factors("2,3") == (2, 3)
    assert parse_factors("2x1.5x1.5") == (2, half, half) and parse_factors([1, 2, 2]) == (1, 2, 2)
    assert all(isinstance(f, int) for f in parse_factors(2.0))
    with pytest.raises(ValueError, match=r"--factor must have 2 entries .* got \[2\]"):
        parse_factors([2], "--factor")
    with pytest.raises(ValueError, match=r"--factor must be F \(both sides\), HxW or FxHxW"):
        parse_factors("2x2x2x2", "--factor")
