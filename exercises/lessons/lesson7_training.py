"""Lesson 7, training self-attention: a training loop and a heatmap of the weights.
Their cases, their items and their known mistakes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

import solutions
from exercises.cases import Case, Item, build_module, literal_arg, rand, reference_params, tensor_arg, var_arg
from exercises.compare import Outputs, number_dtype, value_mismatch
from exercises.mistakes import mistake
from exercises.tolerances import tolerance
from solutions.lesson7_training import TOY_D_MODEL

NOTEBOOK = "07_training_self_attention.ipynb"


# --- cases ----------------------------------------------------------------------------------------------


STEPS = 50  # the graded run: about 0.05 s on a CPU core
LR = 0.05
# How far a correct run may stray from the reference run from the same initial weights, per dtype of the
# computation: Adam divides by the root of the squared gradients, so rounding differences between two
# correct loops (``((out - y) ** 2).mean()`` against ``F.mse_loss``, ``model.zero_grad()``, the worker's
# inputs read back from a file) can grow over the steps: 10 times the relative tolerance of
# exercises/tolerances.py leaves them room (the seed soak passes with 1 time), and an absolute part a
# tenth of it, so that the tail of the curve (losses near 1e-3) is judged relatively too. A curve that is
# not this training (made up, shifted by one step, another loss, another optimiser) is off by percents.
CURVE_SCALE = 10.0


def curve_tolerance(dtype: torch.dtype) -> tuple[float, float]:
    rtol, atol = tolerance(dtype)
    return rtol * CURVE_SCALE, atol * CURVE_SCALE / 100


def model_loss(params: dict[str, torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """The mean-squared error that the reference model with ``params`` (name -> tensor) gives, in float64.

    Computed in the grader from the returned parameters, so nothing the student's code did to the model's
    ``forward`` can change it.
    """
    model = solutions.ToySelfAttention(inputs.shape[-1]).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name].double().cpu())
        output, _ = model(inputs.double().cpu())
        return float(((output - targets.double().cpu()) ** 2).mean())


def returned_params(outputs: Outputs, key: str = "after") -> dict[str, torch.Tensor] | None:
    """The parameters of the model after training (output ``after``; ``before``: as loaded), by name, or None
    if one is missing."""
    names = [name for name, _ in solutions.ToySelfAttention(TOY_D_MODEL).named_parameters()]
    found = {name: outputs.tensors.get(f"{key}.{name}") for name in names}
    if any(t is None or not t.is_floating_point() for t in found.values()):
        return None
    return found  # type: ignore[return-value]


def end_of_curve_slack(reference: Outputs, dtype: torch.dtype) -> float:
    """How far from the last recorded loss the returned model's loss may lie.

    The returned model's loss is the loss after the last step, one step past the curve. How far one step
    moves the loss is read from the reference run: twice the larger of its own last change and its own gap
    between the returned model's loss and the last recorded loss, plus the curve tolerance.
    """
    r = reference.tensors["losses"]
    rtol, atol = curve_tolerance(dtype)
    after = returned_params(reference)
    gap = abs(model_loss(after, reference.tensors["x"], reference.tensors["y"]) - float(r[-1])) if after else 0.0
    last_change = float((r[-2] - r[-1]).abs()) if len(r) > 1 else 0.0
    return 2 * max(gap, last_change) + rtol * float(r[-1].abs()) + atol


def _train(gen, dtype):
    seed = int(torch.randint(0, 2**31, (1,), generator=gen))
    sentences, inputs, targets = solutions.toy_dataset(seed=seed, dtype=dtype)
    d_model = inputs.shape[-1]
    params = reference_params("ToySelfAttention", {"d_model": d_model}, gen, dtype)
    steps = STEPS
    program = build_module("ToySelfAttention", {"d_model": d_model}, params, train=True) + [
        {"op": "params", "obj": "m", "out": "before"},
        {"op": "output", "key": "before", "var": "before"},
        {"op": "call", "fn": "train_self_attention", "args": [var_arg("m"), tensor_arg("x"), tensor_arg("y")],
         "kwargs": {"steps": literal_arg(steps), "lr": literal_arg(LR)}, "out": "losses"},
        {"op": "output", "key": "losses", "var": "losses"},
        {"op": "params", "obj": "m", "out": "after"},
        {"op": "output", "key": "after", "var": "after"},
        # the data, as the call saw them (the reference's copy is what the mistakes' predicates read)
        {"op": "call", "fn": "torch.clone", "args": [tensor_arg("x")], "out": "x_copy"},
        {"op": "output", "key": "x", "var": "x_copy"},
        {"op": "call", "fn": "torch.clone", "args": [tensor_arg("y")], "out": "y_copy"},
        {"op": "output", "key": "y", "var": "y_copy"},
    ]
    initial = {k[2:]: v for k, v in params.items()}
    computed_in = dtype

    def judge(student: Outputs, reference: Outputs) -> str | None:
        meta = student.meta.get("losses", {})
        if meta.get("pytype") not in ("list", "tuple") or not meta.get("numbers"):
            return f"train_self_attention must return a list of per-step losses (floats), got {meta.get('pytype')}"
        losses = student.tensors["losses"]
        if len(losses) != steps:
            return f"expected {steps} losses (one per step), got {len(losses)}"
        if not bool(torch.isfinite(losses).all()):
            return "some losses are NaN or inf"
        ref = reference.tensors["losses"]
        # the losses are float32 numbers carried as float64: judged as what they were computed in
        if value_mismatch("first loss", losses[:1], ref[:1], computed_in=number_dtype(reference.meta["losses"])):
            return (f"the first loss should be the mean-squared error of the untrained model, {float(ref[0]):.6g}; "
                    f"got {float(losses[0]):.6g}: record each loss before that step's update, and use the mean "
                    "of the squared differences")
        after = returned_params(student)
        if after is None:
            return "the model's parameters could not be read back after training"
        if all(torch.equal(after[k].to(v.dtype), v) for k, v in initial.items()):
            return "the model's weights did not change: step the optimiser built on model.parameters()"
        if not float(losses[-1]) < float(losses[0]) - 0.5 * float(ref[0] - ref[-1]):
            return (f"the loss did not fall (first {float(losses[0]):.4g}, last {float(losses[-1]):.4g}; training "
                    f"gets it to {float(ref[-1]):.4g}): every step needs a fresh gradient (zero it), "
                    "loss.backward(), then optimizer.step()")
        returned = model_loss(after, inputs, targets)
        if returned > float(losses[-1]) + end_of_curve_slack(reference, computed_in):
            return (f"the model you return gives a loss of {returned:.6g} on these data, but your last recorded "
                    f"loss is {float(losses[-1]):.6g}: the losses must be those of training this model (its loss "
                    "after the last step is at most about one step's change above the last one recorded)")
        rtol, atol = curve_tolerance(computed_in)
        off = ((losses - ref).abs() > atol + rtol * ref.abs()).nonzero()
        if len(off):
            k = int(off[0, 0])
            return (f"your losses leave those of Adam training from the same initial weights at step {k}: got "
                    f"{float(losses[k]):.6g}, expected {float(ref[k]):.6g}: one Adam optimiser made once before "
                    "the loop, each step zero the gradients, compute the loss, record it, backward, step")
        expected = model_loss(returned_params(reference), inputs, targets)  # type: ignore[arg-type]
        # a quarter of the reference's own last-step change tells one step more (or fewer) from rounding
        if abs(returned - expected) > 0.25 * abs(expected - float(ref[-1])) + atol + rtol * abs(expected):
            return (f"the model you return gives a loss of {returned:.6g}, not {expected:.6g}, the loss after "
                    f"{steps} optimiser steps: take exactly one step per recorded loss and return the trained model")
        return None

    return [Case(f"toy_{len(sentences)}_sentences_{inputs.shape[-2]}_tokens", program,
                 {**params, "x": inputs, "y": targets}, checks=(judge,), compare=False)]


def _plot(gen, dtype):
    n = 5
    weights = solutions.softmax_stable(rand(gen, n, n, dtype=torch.float64, scale=2.0)).float()
    tokens = ["the", "cat", "sat", "on", "mats"]

    def judge(student: Outputs, reference: Outputs) -> str | None:
        meta = student.meta.get("fig", {})
        if meta.get("pytype") != "Figure":
            return f"plot_attention must return a matplotlib Figure (e.g. `return fig`), got {meta.get('pytype')}"
        for ax in meta.get("axes", []):
            for image in ax["images"]:
                data = student.tensors[image]
                if data.numel() == n * n and torch.allclose(data.reshape(n, n), weights.double(), atol=1e-3):
                    if ax["xticklabels"] != tokens or ax["yticklabels"] != tokens:
                        return (f"the heatmap needs the tokens as tick labels on both axes: x={ax['xticklabels']}, "
                                f"y={ax['yticklabels']}, expected {tokens} (set_xticks(range(n)) then set_xticklabels)")
                    return None
        return "no heatmap in the figure shows the (n, n) weights as given (use ax.imshow(weights))"

    program = [{"op": "call", "fn": "plot_attention", "args": [tensor_arg("w"), literal_arg(tokens)], "out": "fig"},
               {"op": "output", "key": "fig", "var": "fig"}]
    return [Case("five_tokens", program, {"w": weights}, checks=(judge,), compare=False)]


ITEMS: list[Item] = [
    Item("train_self_attention", NOTEBOOK, _train, dtypes=("float64", "float32"), gpu_dtypes=()),
    Item("plot_attention", NOTEBOOK, _plot, dtypes=(None,), gpu_dtypes=()),
]


# --- known mistakes -------------------------------------------------------------------------------------


def _train_variant(*, step: bool = True, zero_grad: bool = True, after: bool = False, loss_fn=F.mse_loss,
                   as_tensors: bool = False, returns: bool = True, optimizer_in_loop: bool = False,
                   step_first: bool = False):
    def train_self_attention(model, inputs, targets, steps, lr):
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        losses = []
        for _ in range(steps):
            if optimizer_in_loop:
                optimizer = torch.optim.Adam(model.parameters(), lr=lr)
            if zero_grad:
                optimizer.zero_grad()
            loss = loss_fn(model(inputs)[0], targets)
            if step and step_first:
                optimizer.step()
            loss.backward()
            if step and not step_first:
                optimizer.step()
            if after:
                with torch.no_grad():
                    loss = loss_fn(model(inputs)[0], targets)
            losses.append(loss if as_tensors else loss.item())
        return losses if returns else None
    return {"train_self_attention": train_self_attention}


def _fabricated():
    def train_self_attention(model, inputs, targets, steps, lr):
        with torch.no_grad():
            first = F.mse_loss(model(inputs)[0], targets).item()
            for p in model.parameters():
                p.add_(1e-3)
        return [first * 0.9**i for i in range(steps)]
    return {"train_self_attention": train_self_attention}


def _losses(outputs: Outputs) -> torch.Tensor | None:
    meta = outputs.meta.get("losses", {})
    if meta.get("pytype") not in ("list", "tuple") or not meta.get("numbers"):
        return None
    return outputs.tensors["losses"]


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = torch.float32) -> bool:
    rtol, atol = curve_tolerance(dtype)
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=atol))


def _never_steps(student: Outputs, reference: Outputs) -> bool:
    s = _losses(student)
    return s is not None and len(s) > 1 and bool((s == s[0]).all())


def _loss_after_step(student: Outputs, reference: Outputs) -> bool:
    s, r = _losses(student), _losses(reference)
    return s is not None and r is not None and len(s) == len(r) > 1 and _close(s[:-1], r[1:])


def _summed(student: Outputs, reference: Outputs) -> bool:
    s, r, y = _losses(student), _losses(reference), reference.tensors.get("y")
    return (s is not None and r is not None and y is not None and len(s) == len(r) > 1
            and _close(s[:1], r[:1] * y.numel()))


def _other_loss(student: Outputs, reference: Outputs) -> bool:
    s, r = _losses(student), _losses(reference)
    return (s is not None and r is not None and len(s) == len(r) > 1 and bool(torch.isfinite(s).all())
            and not _close(s[:1], r[:1]) and not _close(s[:1], r[1:2]) and not _summed(student, reference)
            and float(s[-1]) < float(s[0]))


def _made_up(student: Outputs, reference: Outputs) -> bool:
    """A falling curve that is not the training's, and the returned model's loss far above its end."""
    s, r = _losses(student), _losses(reference)
    after = returned_params(student)
    if s is None or r is None or after is None or len(s) != len(r) or len(s) < 2 or _close(s, r):
        return False
    returned = model_loss(after, reference.tensors["x"], reference.tensors["y"])
    return float(s[-1]) < float(s[0]) and returned > float(s[-1]) + end_of_curve_slack(reference, torch.float32)


def _first_two_right(student: Outputs, reference: Outputs) -> bool:
    s, r = _losses(student), _losses(reference)
    return s is not None and r is not None and len(s) == len(r) > 2 and _close(s[:2], r[:2]) and not _close(s, r)


def _gradients_pile_up(student: Outputs, reference: Outputs) -> bool:
    """The first two losses are right (the first gradient is clean), then the loss climbs."""
    s = _losses(student)
    return _first_two_right(student, reference) and float(s[-1]) > float(s[0])


def _fresh_adam_every_step(student: Outputs, reference: Outputs) -> bool:
    """Every weight moved by a whole number of learning rates: Adam's first step (lr * sign(g)), each step."""
    before, after = returned_params(reference, "before"), returned_params(student)
    if not _first_two_right(student, reference) or before is None or after is None:
        return False
    moved = torch.cat([(after[k].double() - before[k].double()).flatten() for k in before]).abs()
    in_lr = moved[moved > 0] / LR
    return len(in_lr) > 0 and float(((in_lr - in_lr.round()).abs() < 0.01).double().mean()) > 0.5


def _losses_are_tensors(student: Outputs, reference: Outputs) -> bool:
    meta = student.meta.get("losses", {})
    return (meta.get("pytype") in ("list", "tuple") and not meta.get("numbers")
            and student.meta.get("losses.0", {}).get("pytype") == "Tensor")


def _returned(key: str, kind: str):
    def predicate(student: Outputs, reference: Outputs) -> bool:
        return student.meta.get(key, {}).get("pytype") == kind
    return predicate


@mistake("train_self_attention", "optimiser_never_steps",
         "the weights never change, so the loss stays flat: optimizer.step() is missing (or loss.backward() "
         "is, and there are no gradients; the two cannot be told apart from the losses)",
         "each step: optimizer.zero_grad(), loss.backward(), optimizer.step()", predicate=_never_steps,
         same_as=("step_before_backward",))
def _train_no_step():
    return _train_variant(step=False)


@mistake("train_self_attention", "step_before_backward",
         "optimizer.step() comes before loss.backward(): when it runs the gradients were just zeroed, so "
         "it changes nothing and the loss stays flat",
         "the order is zero_grad(), forward, loss, backward(), step()", predicate=_never_steps,
         same_as=("optimiser_never_steps",))
def _train_step_first():
    return _train_variant(step_first=True)


@mistake("train_self_attention", "no_zero_grad",
         "the gradients are never reset, so from the second step on each step uses the sum of all past "
         "gradients (the first two losses are right, then the curve leaves the training's)",
         "call optimizer.zero_grad() once every step, before loss.backward()", predicate=_gradients_pile_up)
def _train_no_zero():
    return _train_variant(zero_grad=False)


@mistake("train_self_attention", "optimizer_created_in_loop",
         "a new Adam optimiser is made at every step, so its running averages of the gradients start from "
         "zero each time (the first two losses are right, then the curve leaves the training's)",
         "create the optimiser once, before the loop", predicate=_fresh_adam_every_step)
def _train_optimizer_in_loop():
    return _train_variant(optimizer_in_loop=True)


@mistake("train_self_attention", "loss_recorded_after_step",
         "the losses are recorded after the optimiser step (losses[0] is already the loss after one update)",
         "append loss.item() of the loss you call backward() on, computed before optimizer.step()",
         predicate=_loss_after_step)
def _train_after():
    return _train_variant(after=True)


@mistake("train_self_attention", "not_mean_squared_error",
         "the model trains, but the first loss is not the mean-squared error of the untrained model: a "
         "different loss (e.g. L1, the mean of the absolute differences)?",
         "the loss is the mean over every element of (output - targets) squared", predicate=_other_loss)
def _train_l1():
    return _train_variant(loss_fn=F.l1_loss)


@mistake("train_self_attention", "squared_error_summed",
         "the loss is the sum of the squared differences, not their mean (every loss is larger by the "
         "number of elements, and so are the gradients)",
         "take the mean over every element, not the sum", predicate=_summed)
def _train_summed():
    return _train_variant(loss_fn=lambda out, y: F.mse_loss(out, y, reduction="sum"))


@mistake("train_self_attention", "fabricated_curve",
         "the losses are not those of training this model: the model that comes back gives a loss far above "
         "the end of the reported curve",
         "record loss.item() of the real loss each step, and train the model you were given", predicate=_made_up)
def _train_fabricated():
    return _fabricated()


@mistake("train_self_attention", "losses_are_tensors",
         "the losses are appended as tensors, not Python floats",
         "append loss.item()", predicate=_losses_are_tensors)
def _train_tensors():
    return _train_variant(as_tensors=True)


@mistake("train_self_attention", "returns_nothing",
         "the function returns None: the list of losses is never returned",
         "end with return losses", predicate=_returned("losses", "NoneType"))
def _train_none():
    return _train_variant(returns=False)


def _plot_variant(*, xticks: bool = True, yticks: bool = True, transpose: bool = False, returns: str = "fig"):
    def plot_attention(weights, tokens):
        from matplotlib.figure import Figure

        fig = Figure()
        ax = fig.add_subplot()
        w = weights.detach().cpu().float()
        ax.imshow((w.T if transpose else w).numpy())
        n = len(tokens)
        if xticks:
            ax.set_xticks(range(n), labels=list(tokens))
        if yticks:
            ax.set_yticks(range(n), labels=list(tokens))
        return {"fig": fig, "ax": ax, "none": None}[returns]
    return {"plot_attention": plot_attention}


def _heatmaps(student: Outputs, reference: Outputs, transposed: bool = False) -> list[dict[str, Any]]:
    """The student's axes holding an image equal to the reference heatmap (or its transpose)."""
    ref_ax = reference.meta["fig"]["axes"][0]
    expected = reference.tensors[ref_ax["images"][0]]
    if transposed:
        expected = expected.T
    found = []
    for ax in student.meta.get("fig", {}).get("axes", []):
        for image in ax["images"]:
            data = student.tensors.get(image)
            if data is not None and data.shape == expected.shape and torch.allclose(data, expected, atol=1e-3):
                found.append(ax)
    return found


def _labels(missing: str):
    def predicate(student: Outputs, reference: Outputs) -> bool:
        tokens = reference.meta["fig"]["axes"][0]["xticklabels"]
        for ax in _heatmaps(student, reference):
            have = (ax["xticklabels"] == tokens, ax["yticklabels"] == tokens)
            if (missing == "both" and not any(have)) or (missing == "one" and sum(have) == 1):
                return True
        return False
    return predicate


def _transposed_heatmap(student: Outputs, reference: Outputs) -> bool:
    return bool(_heatmaps(student, reference, transposed=True)) and not _heatmaps(student, reference)


@mistake("plot_attention", "returns_nothing",
         "the function returns None (plt.show() or no return statement)",
         "create fig, ax = plt.subplots() and end with return fig", predicate=_returned("fig", "NoneType"))
def _plot_none():
    return _plot_variant(returns="none")


@mistake("plot_attention", "returns_axes",
         "the function returns the Axes, not the Figure",
         "return fig (from fig, ax = plt.subplots()), not ax", predicate=_returned("fig", "Axes"))
def _plot_axes():
    return _plot_variant(returns="ax")


@mistake("plot_attention", "tick_labels_missing",
         "the heatmap has no token tick labels",
         "ax.set_xticks(range(n), labels=tokens) and ax.set_yticks(range(n), labels=tokens)",
         predicate=_labels("both"))
def _plot_no_labels():
    return _plot_variant(xticks=False, yticks=False)


@mistake("plot_attention", "tick_labels_on_one_axis",
         "the tokens label only one axis: queries (rows, y) and keys (columns, x) both need them",
         "set both: ax.set_xticks(range(n), labels=tokens) and ax.set_yticks(range(n), labels=tokens)",
         predicate=_labels("one"))
def _plot_one_axis():
    return _plot_variant(yticks=False)


@mistake("plot_attention", "heatmap_transposed",
         "the heatmap shows the transposed weights: keys as rows and queries as columns",
         "ax.imshow(weights): row i (y) is query i, column j (x) is key j", predicate=_transposed_heatmap)
def _plot_transposed():
    return _plot_variant(transpose=True)
