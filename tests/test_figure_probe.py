"""The figure probe (``exercises.program``) reports the tick labels a figure shows, not the ones outside its view.

Found by the verdicts issue: ``matshow`` followed by ``set_xticklabels(['', *tokens])`` (a common recipe) gives
ticks at -1 .. n whose labels outside the view are empty strings; the probe listed them, so a heatmap showing
exactly the tokens on both axes was judged to have the wrong labels.
"""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from exercises.program import serialise  # noqa: E402

TOKENS = ["the", "cat", "sat", "on", "mats"]


def probed_labels(fig) -> tuple[list[str], list[str]]:
    tensors, meta = {}, {}
    serialise(fig, "fig", tensors, meta)
    ax = meta["fig"]["axes"][0]
    return ax["xticklabels"], ax["yticklabels"]


def matshow_with_padded_labels() -> Figure:
    """The recipe that shows exactly the tokens but lets the locator put ticks at -1 and n too."""
    fig = Figure()
    ax = fig.add_subplot()
    ax.matshow(torch.rand(5, 5).numpy())
    with pytest.warns(UserWarning):  # matplotlib warns that the labels are not tied to fixed ticks
        ax.set_xticklabels([""] + TOKENS)
        ax.set_yticklabels([""] + TOKENS)
    return fig


def test_are_ticks_outside_the_view_left_out():
    fig = matshow_with_padded_labels()
    ax = fig.axes[0]
    all_labels = [t.get_text() for t in ax.get_xticklabels()]
    assert all_labels != TOKENS and set(all_labels) - set(TOKENS) == {""}, all_labels  # the fault's cause
    assert probed_labels(fig) == (TOKENS, TOKENS)


def test_does_the_probe_still_see_wrong_or_missing_labels():
    fig = Figure()
    ax = fig.add_subplot()
    ax.imshow(torch.rand(5, 5).numpy())
    ax.set_xticks(range(5), labels=TOKENS[::-1])  # wrong order on x, none set on y
    x, y = probed_labels(fig)
    assert x == TOKENS[::-1]
    assert y != TOKENS


def test_is_a_label_on_the_edge_of_the_view_kept():
    fig = Figure()
    ax = fig.add_subplot()
    ax.plot(range(5))
    ax.set_xlim(0, 4)
    ax.set_xticks(range(5), labels=TOKENS)
    assert probed_labels(fig)[0] == TOKENS
