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

NOTEBOOK = "07_training_self_attention.ipynb"


# --- cases ----------------------------------------------------------------------------------------------


def _train(gen, dtype):
    tokens, inputs, targets = solutions.toy_dataset(seed=int(torch.randint(0, 2**31, (1,), generator=gen)),
                                                    dtype=dtype)
    d_model = inputs.shape[-1]
    params = reference_params("ToySelfAttention", {"d_model": d_model}, gen, dtype)
    steps = 60
    program = build_module("ToySelfAttention", {"d_model": d_model}, params, train=True) + [
        {"op": "call", "fn": "train_self_attention", "args": [var_arg("m"), tensor_arg("x"), tensor_arg("y")],
         "kwargs": {"steps": literal_arg(steps), "lr": literal_arg(0.05)}, "out": "losses"},
        {"op": "output", "key": "losses", "var": "losses"},
        {"op": "params", "obj": "m", "out": "after"},
        {"op": "output", "key": "after", "var": "after"},
    ]

    def judge(student: Outputs, reference: Outputs) -> str | None:
        meta = student.meta.get("losses", {})
        if meta.get("pytype") not in ("list", "tuple") or not meta.get("numbers"):
            return f"train_self_attention must return a list of per-step losses (floats), got {meta.get('pytype')}"
        losses = student.tensors["losses"]
        if len(losses) != steps:
            return f"expected {steps} losses (one per step), got {len(losses)}"
        if not bool(torch.isfinite(losses).all()):
            return "some losses are NaN or inf"
        first = reference.tensors["losses"][0]
        # the losses are float32 numbers carried as float64: judged as what they were computed in
        if value_mismatch("first loss", losses[:1], first.reshape(1),
                          computed_in=number_dtype(reference.meta["losses"])) is not None:
            return (f"the first loss should be the mean-squared error of the untrained model, {float(first):.6g}; "
                    f"got {float(losses[0]):.6g}: record loss.item() before the optimiser step, use F.mse_loss")
        if not float(losses[-1]) < 0.5 * float(losses[0]):
            return (f"the loss did not fall (first {float(losses[0]):.4g}, last {float(losses[-1]):.4g}): "
                    "call loss.backward() and optimizer.step() every step, and optimizer.zero_grad()")
        changed = [k for k in params if not torch.equal(student.tensors.get("after." + k[2:], params[k]), params[k])]
        if not changed:
            return "the model's weights did not change: step the optimiser built on model.parameters()"
        return None

    return [Case(f"toy_{len(tokens)}_tokens", program, {**params, "x": inputs, "y": targets}, checks=(judge,),
                 compare=False)]


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
    Item("train_self_attention", NOTEBOOK, _train, dtypes=("float32",), gpu_dtypes=()),
    Item("plot_attention", NOTEBOOK, _plot, dtypes=(None,), gpu_dtypes=()),
]


# --- known mistakes -------------------------------------------------------------------------------------


def _train_variant(*, step: bool = True, zero_grad: bool = True, after: bool = False, loss_fn=F.mse_loss,
                   as_tensors: bool = False, returns: bool = True):
    def train_self_attention(model, inputs, targets, steps, lr):
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        losses = []
        for _ in range(steps):
            if zero_grad:
                optimizer.zero_grad()
            loss = loss_fn(model(inputs)[0], targets)
            loss.backward()
            if step:
                optimizer.step()
            if after:
                with torch.no_grad():
                    loss = loss_fn(model(inputs)[0], targets)
            losses.append(loss if as_tensors else loss.item())
        return losses if returns else None
    return {"train_self_attention": train_self_attention}


def _losses(outputs: Outputs) -> torch.Tensor | None:
    meta = outputs.meta.get("losses", {})
    if meta.get("pytype") not in ("list", "tuple") or not meta.get("numbers"):
        return None
    return outputs.tensors["losses"]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-3, atol=1e-6))


def _never_steps(student: Outputs, reference: Outputs) -> bool:
    s = _losses(student)
    return s is not None and len(s) > 1 and bool((s == s[0]).all())


def _no_zero_grad(student: Outputs, reference: Outputs) -> bool:
    s, r = _losses(student), _losses(reference)
    return (s is not None and r is not None and len(s) == len(r) > 2 and _close(s[:2], r[:2])
            and not _close(s[2:], r[2:]) and not float(s[-1]) < 0.5 * float(s[0]))


def _loss_after_step(student: Outputs, reference: Outputs) -> bool:
    s, r = _losses(student), _losses(reference)
    # Only the first recorded loss: later ones drift apart between two equally correct float32 models (the
    # notebook's given class and the reference's), since Adam's first steps follow the gradients' signs.
    return s is not None and r is not None and len(s) == len(r) > 1 and _close(s[:1], r[1:2])


def _other_loss(student: Outputs, reference: Outputs) -> bool:
    s, r = _losses(student), _losses(reference)
    return (s is not None and r is not None and len(s) == len(r) > 1 and bool(torch.isfinite(s).all())
            and not _close(s[:1], r[:1]) and not _close(s[:1], r[1:2]) and float(s[-1]) < float(s[0]))


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
         "each step: optimizer.zero_grad(), loss.backward(), optimizer.step()", predicate=_never_steps)
def _train_no_step():
    return _train_variant(step=False)


@mistake("train_self_attention", "no_zero_grad",
         "the gradients are never reset, so each step uses the sum of all past gradients and the loss blows up "
         "after the first step",
         "call optimizer.zero_grad() at the start of every step", predicate=_no_zero_grad)
def _train_no_zero():
    return _train_variant(zero_grad=False)


@mistake("train_self_attention", "loss_recorded_after_step",
         "the losses are recorded after the optimiser step (losses[0] is already the trained model's loss)",
         "append loss.item() of the loss you call backward() on, computed before optimizer.step()",
         predicate=_loss_after_step)
def _train_after():
    return _train_variant(after=True)


@mistake("train_self_attention", "not_mean_squared_error",
         "the model trains, but the first loss is not the mean-squared error of the untrained model: a "
         "different loss (e.g. L1, or a sum instead of a mean)?",
         "loss = F.mse_loss(output, targets), with output = model(inputs)[0]", predicate=_other_loss)
def _train_l1():
    return _train_variant(loss_fn=F.l1_loss)


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
