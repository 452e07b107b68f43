r"""Compare two parsed answers as math: math-verify's verdict, minus its known false matches.

math-verify's `verify` is generous where it should be exact. On top of a match it reports, this
module checks the pair again and drops the match when:

- two exact numbers only agree after rounding: `verify` chops differences below ~1e-15 and rounds
  floats to 6 decimals, so 1/2^99 "equals" 1/2^98 and 1/2004! "equals" 1/2006!. Exact numbers
  (no decimal point on either side) must agree to 30 significant digits, evaluated at 50 digits;
  when a side was written with a decimal point, to a relative 1e-5 (0.333333 still equals 1/3,
  0.0 no longer equals 10^{-7});
- expressions with variables agree only after chopping (x/2^99 vs x/2^98): both sides are
  evaluated at two fixed rational points and must agree there as numbers do;
- two equations are matched whose sides do not say the same thing: `a = b` and `c = d` must have
  (a - b) / (c - d) equal to a non-zero constant (x = 5 and 2x = 10 do; 3x-y+13=0 and
  3x+4y+14=0 do not);
- sets, tuples and intervals: their elements are checked the same way.

The malformed-LaTeX false match (4 vs 4\sqrt(2)) is closed in `rewards.math`, by parsing answers
as LaTeX only (math-verify's plain-expression fallback reads `4\sqrt(2)` as 4).
"""

from __future__ import annotations

from collections.abc import Callable

from math_verify import verify
from math_verify.utils import timeout
from sympy import (
    Basic,
    Eq,
    Expr,
    FiniteSet,
    Float,
    Interval,
    MatrixBase,
    Rational,
    Symbol,
    Tuple,
    simplify,
)

DIGITS = 50
"""Working precision (significant digits) of the numeric checks."""
EXACT_REL_TOL = 1e-30
"""Exact numbers must agree to this relative difference."""
FLOAT_REL_TOL = 1e-5
"""Where a side was written as a decimal, a match may differ by this relative amount."""
PROBE_POINTS = ((Rational(7, 3), Rational(-5, 11), Rational(13, 17)), (Rational(2, 7),) * 3)
"""Values substituted for the variables (first, second, third...) of symbolic answers."""


def answers_match(gold: list, pred: list, *, timeout_s: int | None) -> bool:
    r"""True if some math object of `pred` equals some math object of `gold`.

    Both are lists as `math_verify.parse` returns them (math objects, then strings); only the
    math objects are compared. A pair matches if math-verify's `verify(gold, pred)` says so and
    `agrees(gold, pred)` confirms it.

    >>> from math_verify import parse
    >>> answers_match(parse("$\\frac{1}{2}$"), parse("$0.5$"), timeout_s=None)
    True
    >>> answers_match(parse("$1/2^{99}$"), parse("$1/2^{98}$"), timeout_s=None)
    False
    """
    golds = [g for g in gold if isinstance(g, (Basic, MatrixBase))]
    preds = [p for p in pred if isinstance(p, (Basic, MatrixBase))]
    bounded_agrees = timeout(timeout_s)(agrees)
    for g in golds:
        for p in preds:
            same = verify(g, p, timeout_seconds=timeout_s, raise_on_error=True)
            if same and bounded_agrees(g, p):
                return True
    return False


def agrees(gold: Basic | MatrixBase, pred: Basic | MatrixBase) -> bool:
    """False where a match of math-verify's is one of its known false matches (module docstring).

    Pairs of other kinds (matrices, inequalities, text) are left to math-verify: True.
    """
    gold, pred = _unwrap_assignment(gold, pred)
    if isinstance(gold, Eq) and isinstance(pred, Eq):
        return _equations_agree(gold, pred)
    for kind, check in _CONTAINER_CHECKS:
        if isinstance(gold, kind) and isinstance(pred, kind):
            return check(gold, pred)
    if isinstance(gold, Expr) and isinstance(pred, Expr):
        return _expressions_agree(gold, pred)
    return True


def _unwrap_assignment(gold: Basic, pred: Basic) -> tuple[Basic, Basic]:
    """Compare what math-verify compares: `x = 3` against 3 is 3 against 3."""
    if isinstance(pred, Eq) and not isinstance(gold, Eq):
        return gold, pred.rhs
    if isinstance(gold, Eq) and isinstance(gold.lhs, Symbol) and not isinstance(pred, Eq):
        return gold.rhs, pred
    return gold, pred


def _equations_agree(gold: Eq, pred: Eq) -> bool:
    """Same solution set as linear forms: (a - b) / (c - d) is a non-zero constant."""
    g, p = gold.lhs - gold.rhs, pred.lhs - pred.rhs
    if p == 0:
        return g == 0
    ratio = simplify(g / p)
    return not ratio.free_symbols and ratio.is_zero is False and ratio.is_finite is not False


def _expressions_agree(gold: Expr, pred: Expr) -> bool:
    if not (gold.free_symbols or pred.free_symbols):
        return _numbers_agree(gold, pred, _tolerance(gold, pred))
    symbols = sorted(gold.free_symbols | pred.free_symbols, key=str)
    for point in PROBE_POINTS:
        values = {s: point[i % len(point)] + i for i, s in enumerate(symbols)}
        g, p = gold.subs(values), pred.subs(values)
        if g.free_symbols or p.free_symbols:  # not plain symbols (e.g. functions): trust verify
            return True
        if not _numbers_agree(g, p, _tolerance(gold, pred)):
            return False
    return True


def _numbers_agree(gold: Expr, pred: Expr, rel_tol: float) -> bool:
    """|gold - pred| <= rel_tol * max(|gold|, |pred|), evaluated at `DIGITS` digits."""
    try:
        diff = abs((gold - pred).evalf(DIGITS))
        scale = max(abs(gold.evalf(DIGITS)), abs(pred.evalf(DIGITS)))
        if not (diff.is_number and scale.is_number and diff.is_finite and scale.is_finite):
            return True  # infinities, nan, undefined: math-verify's call
        return bool(diff <= rel_tol * scale)
    except (TypeError, ValueError):  # not comparable as real numbers: math-verify's call
        return True


def _tolerance(gold: Basic, pred: Basic) -> float:
    return FLOAT_REL_TOL if gold.has(Float) or pred.has(Float) else EXACT_REL_TOL


def _tuples_agree(gold: Tuple, pred: Tuple) -> bool:
    return len(gold) == len(pred) and all(agrees(g, p) for g, p in zip(gold, pred, strict=True))


def _sets_agree(gold: FiniteSet, pred: FiniteSet) -> bool:
    """Every element has an agreeing element on the other side (numbers agree only by value)."""
    g_items, p_items = list(gold), list(pred)
    return all(any(agrees(g, p) for p in p_items) for g in g_items) and all(
        any(agrees(g, p) for g in g_items) for p in p_items
    )


def _intervals_agree(gold: Interval, pred: Interval) -> bool:
    return (
        gold.left_open == pred.left_open
        and gold.right_open == pred.right_open
        and agrees(gold.start, pred.start)
        and agrees(gold.end, pred.end)
    )


_CONTAINER_CHECKS: tuple[tuple[type, Callable[..., bool]], ...] = (
    (Tuple, _tuples_agree),
    (FiniteSet, _sets_agree),
    (Interval, _intervals_agree),
)
