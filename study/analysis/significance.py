"""Welch's t-test, as the report uses it: each row's final val mIoU against the table's first row over seeds.

Written here rather than imported: scipy is not a dependency of segstudy, and this is one function.
tests/test_report.py checks it against Student's t-distribution's published critical values.
"""

from __future__ import annotations

import math
import statistics

ALPHA = 0.05


# -- Welch's t-test --------------------------------------------------------------
def welch_t_test(a, b) -> float | None:
    """Two-sided p-value of Welch's t-test of equal means; None with fewer than 2 values on a side."""
    n1, n2 = len(a), len(b)
    if n1 < 2 or n2 < 2:
        return None
    mean1, mean2 = statistics.fmean(a), statistics.fmean(b)
    var1, var2 = statistics.variance(a), statistics.variance(b)
    standard_error_sq = var1 / n1 + var2 / n2
    if standard_error_sq == 0:
        # No spread on either side: any difference at all is beyond the seeds' spread.
        return 1.0 if mean1 == mean2 else 0.0
    t = (mean1 - mean2) / math.sqrt(standard_error_sq)
    dof = standard_error_sq ** 2 / ((var1 / n1) ** 2 / (n1 - 1) + (var2 / n2) ** 2 / (n2 - 1))
    # P(|T| > |t|) for Student's t with `dof` degrees of freedom.
    return regularized_incomplete_beta(dof / 2, 0.5, dof / (dof + t * t))


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) by its continued fraction (Numerical Recipes, 6.4), without scipy."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    # The fraction converges fast only for x below (a+1)/(a+b+2); use the symmetry I_x(a,b) = 1 - I_{1-x}(b,a).
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def _beta_continued_fraction(a: float, b: float, x: float, max_terms: int = 500, tolerance: float = 1e-15) -> float:
    tiny = 1e-300

    def guarded(value: float) -> float:
        return tiny if abs(value) < tiny else value

    c, d = 1.0, 1.0 / guarded(1.0 - (a + b) * x / (a + 1))
    result = d
    for m in range(1, max_terms + 1):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 / guarded(1.0 + even * d)
        c = guarded(1.0 + even / c)
        result *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 / guarded(1.0 + odd * d)
        c = guarded(1.0 + odd / c)
        step = d * c
        result *= step
        if abs(step - 1.0) < tolerance:
            break
    return result


def format_p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}" if p < 0.1 else f"p={p:.2f}"
