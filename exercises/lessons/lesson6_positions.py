"""Lesson 6, positional information: the sinusoidal positional encoding and the rotary position embedding.
Their cases, their items and their known mistakes.

Both items compute angles ``p * theta_i`` with ``theta_i = base ** (-2i / d)``. The reference computes them
in float64, so the float32 cases may use large positions for the sinusoidal table (where float32 angles are
off by about 1e-4, a known mistake) but only small ones for RoPE (where the spec lets float32 inputs be
rotated in float32: its angles are then off by ``p * 1e-7``, well inside the tolerance for ``p <= 16``).
"""

from __future__ import annotations

from typing import Any

import torch

from exercises.cases import DEVICE_ARG, Case, Check, Item, literal_arg, rand, tensor_arg, var_arg
from exercises.compare import Outputs, compare_outputs, value_mismatch
from exercises.i18n import tr
from exercises.mistakes import error_hint, mistake
from exercises.tolerances import tolerance

NOTEBOOK = "06_positional_information.ipynb"
POSITION_FEATURE_DIMS = ("position", "feature")


def _int(gen: torch.Generator, low: int, high: int) -> int:
    """A random integer in ``[low, high]`` drawn from ``gen``."""
    return int(torch.randint(low, high + 1, (1,), generator=gen))


def _raised(student: Outputs) -> str | None:
    """The exception type name a ``raises`` step recorded ("" when none), or None for other cases."""
    found = student.meta.get("raised")
    return None if found is None else found.get("value", "")


def raises_value_error(name: str, fn: str, args: list[dict], kwargs: dict[str, dict], inputs: dict, what: str) -> Case:
    def check(student: Outputs, reference: Outputs) -> str | None:
        got = _raised(student)
        if got == "ValueError":
            return None
        return tr("{what} must raise ValueError; got {got}").format(what=what,
                                                                    got=tr("no exception") if not got else got)
    return Case(name, [{"op": "raises", "fn": fn, "args": args, "kwargs": kwargs, "out": "r"},
                       {"op": "output", "key": "raised", "var": "r"}], inputs, checks=(check,), compare=False)


# --- sinusoidal_positional_encoding: cases ---------------------------------------------------------------


def _dtype_steps() -> list[dict[str, Any]]:
    """Steps that put the case's dtype (that of the input ``like``) into the variable ``dtype``.

    A program's literals are JSON, so a ``torch.dtype`` argument is read from a tensor of that dtype.
    """
    return [{"op": "call", "fn": "torch.clone", "args": [tensor_arg("like")], "out": "like"},
            {"op": "attr", "obj": "like", "name": "dtype", "out": "dtype"}]


def position_0_and_unit_pairs(student: Outputs, reference: Outputs) -> str | None:
    """Row 0 is (sin 0, cos 0, ...) = (0, 1, 0, 1, ...); every pair lies on the unit circle."""
    pe = student.tensor("out")
    ref = reference.tensor("out")
    if pe is None or ref is None or pe.shape != ref.shape or not pe.is_floating_point() or pe.dim() != 2:
        return None
    row0 = pe[0].double()
    want = ref[0].double()
    if not torch.allclose(row0, want, atol=1e-2):
        if torch.allclose(row0, 1 - want, atol=1e-2):
            return tr("position 0 should be (0, 1, 0, 1, ...): sin(0) = 0 in the even features and cos(0) = 1 in "
                      "the odd ones; yours has the sines and cosines the other way round")
        half = pe.shape[1] // 2
        if torch.allclose(row0[:half], torch.zeros(half, dtype=torch.float64), atol=1e-2) and \
                torch.allclose(row0[half:], torch.ones(half, dtype=torch.float64), atol=1e-2):
            return tr("position 0 should be (0, 1, 0, 1, ...): interleave the pairs, sine in feature 2i and cosine "
                      "in feature 2i + 1, not all the sines first and all the cosines after")
        return tr("position 0 should be (0, 1, 0, 1, ...), the sines and cosines of angle 0: do the positions start "
                  "at 0?")
    pairs = pe.double().unflatten(-1, (-1, 2)).pow(2).sum(-1)  # (n, d/2): sin^2 + cos^2 per pair
    if not torch.allclose(pairs, torch.ones_like(pairs), atol=5e-2):
        return tr("features 2i and 2i + 1 should be the sine and the cosine of the same angle p * theta_i "
                  "(so that sin^2 + cos^2 = 1); yours are not")
    return None


# A float32 answer may compute its angles p * theta_i in float32, as the Annotated Transformer, Llama, d2l and
# Hugging Face do (the lead's decision, issue 16): a table in a dtype below float64 is judged with the usual
# tolerance of its dtype plus the rounding of its own float32 angles, ANGLE_ROUNDING * eps(float32) * |p * theta_i|
# per entry (|d sin(a)| <= |da|). Measured on those four recipes (positions up to 9000, d up to 512) the error
# is at most 4.3 * eps * |angle| (theta_i as exp(-2i/d * log(base)) in float32: the exponent's rounding is
# multiplied by up to log(base)); 1.4 for the others. A float64 table gets no such allowance.
ANGLE_ROUNDING = 8.0
FLOAT32_EPS = torch.finfo(torch.float32).eps


def sinusoidal_angles(num_positions: int, d_model: int, base: float) -> torch.Tensor:
    """``(num_positions, d_model)`` float64: the angle ``p * theta_i`` behind each entry of the table."""
    theta = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (d/2,)
    angles = torch.arange(num_positions, dtype=torch.float64)[:, None] * theta  # (n, d/2)
    return angles.repeat_interleave(2, dim=-1)  # (n, d): entries 2i and 2i + 1 share angle i


def within_own_angle_rounding(angles: torch.Tensor) -> Check:
    """The table's values, judged with the float32 tolerance plus the rounding of float32 angles.

    Used instead of the plain comparison for tables in a dtype below float64; every other property (type,
    shape, dtype, device, finite) is checked as usual by ``compare_outputs``.
    """
    slack = ANGLE_ROUNDING * FLOAT32_EPS * angles.abs()  # (n, d): what a float32 angle may be off by

    def check(student: Outputs, reference: Outputs) -> str | None:
        expected_device = str(reference.meta.get("out", {}).get("device", "cpu"))
        problems = compare_outputs(student, reference, expected_device, {"out": POSITION_FEATURE_DIMS})
        others = [m.message for m in problems if m.kind != "values"]
        if others or not problems:
            return tr("; ").join(others) or None
        actual, expected = student.tensor("out").double(), reference.tensor("out").double()
        rtol, atol = tolerance(reference.tensor("out").dtype)
        excess = (actual - expected).abs() - (atol + rtol * expected.abs() + slack.to(expected.device))
        if not bool((excess > 0).any()):
            return None
        flat = int(excess.argmax())
        p, f = divmod(flat, expected.shape[-1])
        return tr("`out`: {count} of {total} values differ by more than float32 rounding allows (rtol={rtol:g}, "
                  "atol={atol:g}, plus {rounding:g} * eps(float32) * |angle| for angles computed in float32); the "
                  "largest excess is at position {p}, feature {f}: expected {expected:.7f}, got {got:.7f}").format(
            count=int((excess > 0).sum()), total=expected.numel(), rtol=rtol, atol=atol, rounding=ANGLE_ROUNDING,
            p=p, f=f, expected=float(expected[p, f]), got=float(actual[p, f]))
    check.compares_outputs = True  # it is the case's comparison, not only an invariant (docs/CHECKS.md)
    return check


def _sinusoidal_case(name: str, program: list[dict[str, Any]], inputs: dict[str, torch.Tensor],
                     dtype: torch.dtype | None, n: int, d: int, base: float) -> Case:
    """A table case: float64 tables are compared as usual, lower precisions with their own angles' rounding."""
    if dtype == torch.float64 or dtype is None:
        return Case(name, program, inputs, {"out": POSITION_FEATURE_DIMS}, (position_0_and_unit_pairs,))
    return Case(name, program, inputs, {"out": POSITION_FEATURE_DIMS},
                (position_0_and_unit_pairs, within_own_angle_rounding(sinusoidal_angles(n, d, base))), compare=False)


def _sinusoidal(gen, dtype):
    cases = []
    configs = [
        ("small", _int(gen, 3, 8), 2 * _int(gen, 2, 4), None),
        ("odd_num_positions", 2 * _int(gen, 5, 12) + 1, 10, None),
        ("d_model_not_a_power_of_two", _int(gen, 20, 40), 2 * (2 * _int(gen, 2, 7) + 1), None),
        ("d_model_2", _int(gen, 5, 9), 2, None),
        ("large_num_positions", 2048 + _int(gen, 0, 200), 32, None),
        ("custom_base", _int(gen, 16, 40), 8, float(_int(gen, 20, 2000))),
        ("single_position", 1, 6, None),
    ]
    for name, n, d, base in configs:
        kwargs = {"device": DEVICE_ARG, "dtype": var_arg("dtype")}
        if base is not None:
            kwargs["base"] = literal_arg(base)
        program = _dtype_steps() + [
            {"op": "call", "fn": "sinusoidal_positional_encoding", "args": [literal_arg(n), literal_arg(d)],
             "kwargs": kwargs, "out": "result"},
            {"op": "output", "key": "out", "var": "result"}]
        cases.append(_sinusoidal_case(name, program, {"like": torch.zeros(0, dtype=dtype)}, dtype, n, d,
                                      10000.0 if base is None else base))
    if dtype == torch.float32:  # the default dtype is float32
        n = _int(gen, 4, 12)
        cases.append(_sinusoidal_case("default_dtype", [
            {"op": "call", "fn": "sinusoidal_positional_encoding", "args": [literal_arg(n), literal_arg(12)],
             "kwargs": {"device": DEVICE_ARG}, "out": "result"},
            {"op": "output", "key": "out", "var": "result"}], {}, dtype, n, 12, 10000.0))
    odd = 2 * _int(gen, 1, 8) + 1
    cases.append(raises_value_error("odd_d_model_raises", "sinusoidal_positional_encoding",
                                    [literal_arg(4), literal_arg(odd)], {}, {},
                                    tr("sinusoidal_positional_encoding(4, {odd}) (an odd d_model: sines and "
                                       "cosines come in pairs)").format(odd=odd)))
    return cases


# --- apply_rope: cases -----------------------------------------------------------------------------------


def pair_norms_kept(x: torch.Tensor, key: str = "out") -> Check:
    """A rotation keeps the length of every feature pair."""
    def check(student: Outputs, reference: Outputs) -> str | None:
        out = student.tensor(key)
        if out is None or out.shape != x.shape or not out.is_floating_point():
            return None
        before = x.double().unflatten(-1, (-1, 2)).norm(dim=-1)
        after = out.double().unflatten(-1, (-1, 2)).norm(dim=-1)
        if value_mismatch(key, after, before, computed_in=x.dtype, scale=10.0) is not None:
            return tr("the length of each feature pair (x[2i], x[2i+1]) changed: RoPE only rotates pairs, "
                      "(x[2i] cos - x[2i+1] sin, x[2i] sin + x[2i+1] cos), with cos and sin of the same angle")
        return None
    return check


def scores_depend_on_distance_only(shift: int, dtype: torch.dtype) -> Check:
    """Moving both the query's and the key's positions by ``shift`` leaves every score unchanged."""
    def check(student: Outputs, reference: Outputs) -> str | None:
        parts = [student.tensor(k) for k in ("q_at_m", "k_at_n", "q_at_m_shifted", "k_at_n_shifted")]
        if any(p is None or p.shape != reference.tensors["q_at_m"].shape or not p.is_floating_point() for p in parts):
            return None
        before = (parts[0].double() * parts[1].double()).sum(-1)
        after = (parts[2].double() * parts[3].double()).sum(-1)
        if value_mismatch("scores", after, before, computed_in=dtype, scale=10.0) is not None:
            return tr("moving both the query's and the key's positions by {shift} changed the score "
                      "apply_rope(q, m) . apply_rope(k, n): it must depend on m - n only (rotate every pair by "
                      "p * theta_i, with the same theta_i for queries and keys)").format(shift=shift)
        return None
    return check


def _rope_case(name: str, x: torch.Tensor, positions: torch.Tensor | None, base: float | None = None) -> Case:
    args = [tensor_arg("x")] + ([tensor_arg("positions")] if positions is not None else [])
    kwargs = {} if base is None else {"base": literal_arg(base)}
    program = [{"op": "call", "fn": "apply_rope", "args": args, "kwargs": kwargs, "out": "result"},
               {"op": "output", "key": "out", "var": "result"}]
    inputs = {"x": x} | ({"positions": positions} if positions is not None else {})
    dims = {"out": ("batch",) * (x.dim() - 2) + POSITION_FEATURE_DIMS}
    return Case(name, program, inputs, dims, (pair_norms_kept(x),))


def _rope(gen, dtype):
    wide = dtype == torch.float64  # float32 and half precision: positions <= 16 (see the module's docstring)
    limit = 5000 if wide else 16

    def offset(n: int) -> int:
        return _int(gen, 1, limit - n)

    cases = []
    n, d = _int(gen, 3, 9), 2 * _int(gen, 2, 6)
    cases.append(_rope_case("one_sequence", rand(gen, n, d, dtype=dtype), None))
    n = _int(gen, 2, 8)
    cases.append(_rope_case("batch_and_heads", rand(gen, 2, 3, n, 8, dtype=dtype), None))
    n, d = _int(gen, 3, 7), 2 * (2 * _int(gen, 2, 5) + 1)  # d/2 odd: not a power of two
    cases.append(_rope_case("d_not_a_power_of_two", rand(gen, 2, n, d, dtype=dtype), None))
    cases.append(_rope_case("d_2", rand(gen, 3, _int(gen, 3, 8), 2, dtype=dtype), None))
    n = _int(gen, 3, 8)
    start = offset(n)
    cases.append(_rope_case("positions_from_an_offset", rand(gen, 2, n, 8, dtype=dtype),
                            torch.arange(start, start + n)))
    # decoding with a KV cache: one new token at position t, then a chunk that continues a prefix
    t = offset(1)
    cases.append(_rope_case("kv_cache_one_new_token", rand(gen, 2, 2, 1, 8, dtype=dtype), torch.tensor([t])))
    n = _int(gen, 2, 5)
    start = offset(n)
    cases.append(_rope_case("kv_cache_chunk", rand(gen, 1, 2, n, 6, dtype=dtype),
                            torch.arange(start, start + n)))
    n = _int(gen, 4, 8)
    scattered = torch.randperm(limit, generator=gen)[:n].sort().values  # gaps between the positions
    cases.append(_rope_case("non_contiguous_positions", rand(gen, 2, n, 10, dtype=dtype), scattered))
    unordered = torch.randperm(limit, generator=gen)[:n]
    cases.append(_rope_case("unordered_positions", rand(gen, n, 4, dtype=dtype), unordered))
    n = (3, 5, 6)[_int(gen, 0, 2)]  # not d/2 = 4: positions[:, None] * theta then fails loudly
    starts = torch.tensor([offset(n), offset(n)])
    per_sequence = (starts[:, None] + torch.arange(n))[:, None, :]  # (b=2, 1, n): one offset per sequence
    cases.append(_rope_case("positions_per_sequence", rand(gen, 2, 3, n, 8, dtype=dtype), per_sequence))
    base = float(_int(gen, 10, 1000))
    n = _int(gen, 3, 8)
    cases.append(_rope_case("custom_base", rand(gen, 2, n, 12, dtype=dtype), None, base=base))
    cases.append(_relative_case(gen, dtype, limit))
    odd = 2 * _int(gen, 1, 5) + 1
    cases.append(raises_value_error("odd_d_raises", "apply_rope", [tensor_arg("x")], {},
                                    {"x": rand(gen, 3, odd, dtype=dtype)},
                                    tr("apply_rope on x of shape (3, {odd}) (an odd feature size: features are "
                                       "rotated in pairs)").format(odd=odd)))
    return cases


def _relative_case(gen, dtype, limit: int) -> Case:
    """q at positions m, k at positions n, then both moved by the same shift: the scores must not change."""
    n, d = 6, 8
    m_pos = torch.randint(0, limit // 2, (n,), generator=gen)
    n_pos = torch.randint(0, limit // 2, (n,), generator=gen)
    shift = _int(gen, 1, limit // 2 - 1)
    program = []
    for out, x_key, p_key in (("q_at_m", "q", "m"), ("k_at_n", "k", "n"), ("q_at_m_shifted", "q", "m_shifted"),
                              ("k_at_n_shifted", "k", "n_shifted")):
        program += [{"op": "call", "fn": "apply_rope", "args": [tensor_arg(x_key), tensor_arg(p_key)], "out": out},
                    {"op": "output", "key": out, "var": out}]
    inputs = {"q": rand(gen, n, d, dtype=dtype), "k": rand(gen, n, d, dtype=dtype), "m": m_pos, "n": n_pos,
              "m_shifted": m_pos + shift, "n_shifted": n_pos + shift}
    dims = {k: POSITION_FEATURE_DIMS for k in ("q_at_m", "k_at_n", "q_at_m_shifted", "k_at_n_shifted")}
    return Case("scores_depend_on_the_distance_only", program, inputs, dims,
                (scores_depend_on_distance_only(shift, dtype),))


ITEMS: list[Item] = [
    Item("sinusoidal_positional_encoding", NOTEBOOK, _sinusoidal),
    Item("apply_rope", NOTEBOOK, _rope),
]


# --- known mistakes: sinusoidal_positional_encoding ------------------------------------------------------


def _raised_no_value_error(student: Outputs, reference: Outputs) -> bool:
    got = _raised(student)
    return got is not None and got != "ValueError"


def _precision_lost(student: Outputs, reference: Outputs) -> bool:
    """Right to about 1e-3 but not to the dtype's tolerance: angles computed in a lower precision (any route)."""
    actual, expected = student.tensor("out"), reference.tensor("out")
    if actual is None or expected is None or actual.shape != expected.shape or actual.dtype != expected.dtype \
            or not expected.is_floating_point() or expected.dtype not in (torch.float32, torch.float64):
        return False
    error = float((actual.double() - expected.double()).abs().max())
    return error < 1e-3 and value_mismatch("out", actual, expected) is not None


def _sinusoidal_variant(*, layout: str = "interleaved", exponent: str = "2i/d", first: int = 0,
                        use_base: bool = True, compute: str = "float64", out_dtype: str = "asked",
                        check_odd: bool = True):
    def sinusoidal_positional_encoding(num_positions, d_model, base=10000.0, device=None, dtype=torch.float32):
        if check_odd and d_model % 2:
            raise ValueError("d_model must be even")
        work = {"float64": torch.float64, "float32": torch.float32}.get(compute, dtype)
        base = base if use_base else 10000.0
        i = torch.arange(d_model // 2, dtype=work, device=device)  # pair index
        p = torch.arange(first, first + num_positions, dtype=work, device=device)[:, None]  # (n, 1)
        exponents = {"2i/d": 2 * i / d_model, "i/d": i / d_model, "4i/d": 4 * i / d_model,
                     "-2i/d": -2 * i / d_model}[exponent]
        sin = torch.sin(p * base ** -exponents)  # (n, d/2)
        if exponent == "2i/d" and layout == "cos_2i_plus_1":
            cos = torch.cos(p * base ** (-(2 * i + 1) / d_model))
        else:
            cos = torch.cos(p * base ** -exponents)
        if layout == "swapped":
            sin, cos = cos, sin
        if layout == "halves":
            pe = torch.cat((sin, cos), dim=-1)
        else:
            pe = torch.stack((sin, cos), dim=-1).reshape(num_positions, -1)
        return pe.to(dtype if out_dtype == "asked" else torch.float32)
    return {"sinusoidal_positional_encoding": sinusoidal_positional_encoding}


@mistake("sinusoidal_positional_encoding", "sin_cos_swapped",
         "the cosines are in the even features and the sines in the odd ones",
         "PE[p, 2i] = sin(p * theta_i) and PE[p, 2i + 1] = cos(p * theta_i): position 0 is (0, 1, 0, 1, ...)")
def _pe_swapped():
    return _sinusoidal_variant(layout="swapped")


@mistake("sinusoidal_positional_encoding", "halves_not_interleaved",
         "all the sines come first and all the cosines after (torch.cat), instead of alternating",
         "interleave: pe[:, 0::2] = sin, pe[:, 1::2] = cos (or torch.stack((sin, cos), dim=-1).flatten(-2))")
def _pe_halves():
    return _sinusoidal_variant(layout="halves")


@mistake("sinusoidal_positional_encoding", "exponent_i_over_d",
         "the frequencies use base ** (-i / d_model) with i the pair index, instead of base ** (-2i / d_model)",
         "the exponent is 2i / d_model: torch.arange(0, d_model, 2) / d_model")
def _pe_i_over_d():
    return _sinusoidal_variant(exponent="i/d")


@mistake("sinusoidal_positional_encoding", "exponent_doubled",
         "the exponent is doubled twice: 2 * torch.arange(0, d_model, 2) / d_model, i.e. 4i / d_model",
         "torch.arange(0, d_model, 2) already holds 2i: divide it by d_model without doubling again")
def _pe_doubled():
    return _sinusoidal_variant(exponent="4i/d")


@mistake("sinusoidal_positional_encoding", "frequency_inverted",
         "the position is multiplied by base ** (2i / d_model) instead of divided by it: the angles grow "
         "with i instead of shrinking",
         "theta_i = base ** (-2i / d_model), so the angle is p / base ** (2i / d_model)")
def _pe_inverted():
    return _sinusoidal_variant(exponent="-2i/d")


@mistake("sinusoidal_positional_encoding", "cosine_exponent_2i_plus_1",
         "the cosine in feature 2i + 1 uses the exponent (2i + 1) / d_model: a pair's sine and cosine must share "
         "one angle",
         "use theta_i = base ** (-2i / d_model) for both features 2i and 2i + 1")
def _pe_cos_own():
    return _sinusoidal_variant(layout="cos_2i_plus_1")


@mistake("sinusoidal_positional_encoding", "positions_start_at_1",
         "the positions run from 1 to num_positions instead of 0 to num_positions - 1",
         "torch.arange(num_positions): position 0 is (0, 1, 0, 1, ...)")
def _pe_from_1():
    return _sinusoidal_variant(first=1)


@mistake("sinusoidal_positional_encoding", "base_ignored",
         "the base is always 10000: the `base` argument is ignored",
         "use base ** (-2i / d_model) with the argument `base`")
def _pe_base():
    return _sinusoidal_variant(use_base=False)


@mistake("sinusoidal_positional_encoding", "angles_in_low_precision",
         "the angles p * theta_i are computed in float32 even for a float64 table: they lose about 1e-4 at "
         "positions in the thousands (a float32 table may use float32 angles; a float64 table may not)",
         "compute positions, frequencies, angles, sin and cos in the asked dtype (dtype=dtype) or in float64, "
         "then return pe.to(dtype)", predicate=_precision_lost)
def _pe_low_precision():
    return _sinusoidal_variant(compute="float32")


@mistake("sinusoidal_positional_encoding", "dtype_ignored",
         "the table is always float32: the `dtype` argument is ignored",
         "cast the result: return pe.to(dtype)")
def _pe_dtype():
    return _sinusoidal_variant(out_dtype="float32")


@mistake("sinusoidal_positional_encoding", "odd_d_model_accepted",
         "an odd d_model does not raise ValueError",
         "start with: if d_model % 2 != 0: raise ValueError(...)", predicate=_raised_no_value_error)
def _pe_odd():
    return _sinusoidal_variant(check_odd=False)


# --- known mistakes: apply_rope --------------------------------------------------------------------------


def _rope_variant(*, direction: float = 1.0, layout: str = "interleaved", frequencies: str = "2i/d",
                  use_positions: bool = True, first: int = 0, use_base: bool = True, work: str = "promote",
                  cast_back: bool = True, check_odd: bool = True):
    def apply_rope(x, positions=None, base=10000.0):
        n, d = x.shape[-2:]
        if check_odd and d % 2:
            raise ValueError("d must be even")
        if positions is None or not use_positions:
            positions = torch.arange(first, first + n, device=x.device)
        base = base if use_base else 10000.0
        i = torch.arange(d // 2, dtype=torch.float64, device=x.device)
        theta = {"2i/d": base ** (-2 * i / d), "i/d": base ** (-i / d), "i": i,
                 "float32": base ** (-2 * i.float() / d)}[frequencies]  # float32: the LLaMA habit
        angles = positions.to(theta.dtype)[..., None] * theta * direction  # (..., n, d/2)
        dtype = {"promote": torch.promote_types(x.dtype, torch.float32), "float64": torch.float64}[work]
        cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
        xw = x.to(dtype)
        if layout == "halves":  # GPT-NeoX: pair feature j with feature j + d/2
            a, b = xw[..., : d // 2], xw[..., d // 2:]
            out = torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)
        else:
            a, b = xw[..., 0::2], xw[..., 1::2]
            out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
        return out.to(x.dtype) if cast_back else out
    return {"apply_rope": apply_rope}


@mistake("apply_rope", "opposite_direction",
         "the pairs are rotated the other way (clockwise, by -p * theta_i)",
         "(x[2i] cos - x[2i+1] sin, x[2i] sin + x[2i+1] cos): at position 1 the vector (1, 0) goes to "
         "(cos 1, sin 1)")
def _rope_direction():
    return _rope_variant(direction=-1.0)


@mistake("apply_rope", "rotate_half_convention",
         "feature j is paired with feature j + d/2 (the GPT-NeoX / Llama 'rotate_half' layout) instead of the "
         "interleaved pairs (2i, 2i + 1) of the RoFormer paper that this course uses",
         "rotate x[..., 0::2] with x[..., 1::2] and interleave the results again")
def _rope_halves():
    return _rope_variant(layout="halves")


@mistake("apply_rope", "exponent_i_over_d",
         "the frequencies use base ** (-i / d) with i the pair index, instead of base ** (-2i / d)",
         "theta_i = base ** (-torch.arange(0, d, 2) / d)")
def _rope_i_over_d():
    return _rope_variant(frequencies="i/d")


@mistake("apply_rope", "angle_p_times_i",
         "the angle is p * i (the pair index) instead of p * theta_i",
         "theta_i = base ** (-2i / d); the angle of pair i at position p is p * theta_i")
def _rope_p_times_i():
    return _rope_variant(frequencies="i")


@mistake("apply_rope", "positions_ignored",
         "the `positions` argument is ignored: tokens are always rotated as if at positions 0 .. n-1",
         "use positions when given (torch.arange(n) only when positions is None), e.g. for a KV-cache continuation")
def _rope_positions():
    return _rope_variant(use_positions=False)


@mistake("apply_rope", "positions_start_at_1",
         "without `positions`, the tokens are put at positions 1 .. n instead of 0 .. n-1",
         "positions = torch.arange(n): the first token is not rotated")
def _rope_from_1():
    return _rope_variant(first=1)


@mistake("apply_rope", "base_ignored",
         "the base is always 10000: the `base` argument is ignored",
         "theta_i = base ** (-2i / d) with the argument `base`")
def _rope_base():
    return _rope_variant(use_base=False)


@mistake("apply_rope", "frequencies_in_float32",
         "the angles are computed in float32 (e.g. torch.arange(0, d, 2).float()) even for float64 inputs: "
         "they are off by about 1e-7 times the position",
         "compute the angles in float64 (or at least in x's dtype), then cast cos and sin to the dtype you rotate in",
         predicate=_precision_lost)
def _rope_float32():
    return _rope_variant(frequencies="float32")


@mistake("apply_rope", "dtype_not_preserved",
         "the result is float64 for float32 input: cos and sin were computed in float64 and never cast back",
         "return the result in x's dtype: cast cos and sin to x's dtype (float32 for half precision), or end "
         "with .to(x.dtype)")
def _rope_dtype():
    return _rope_variant(work="float64", cast_back=False)


@mistake("apply_rope", "odd_d_accepted",
         "an odd feature size does not raise ValueError",
         "start with: if x.shape[-1] % 2 != 0: raise ValueError(...)", predicate=_raised_no_value_error)
def _rope_odd():
    return _rope_variant(check_odd=False)


error_hint("apply_rope", "positions_assumed_one_dimensional",
           r"The size of tensor a \(\d+\) must match the size of tensor b \(\d+\) at non-singleton dimension",
           "the positions were treated as one-dimensional (positions[:, None]), but they may have batch "
           "dimensions, e.g. (b, 1, n) for one offset per sequence",
           "add the new axis at the end: positions[..., None] * theta gives (..., n, d/2)")
