"""The messages the worker makes in English (it has no catalogue), so that the grader can give them back in the
student's language: ``exercises.i18n.translate_made(text, PROGRAM_ERRORS)``.

They mirror ``exercises/program.py``'s ``ProgramError`` texts and ``autograder/worker/main.py``'s few own ones
(``tests/test_messages_i18n.py`` checks that they still match what those raise). Most specific first: the first
template that matches is used.
"""

from __future__ import annotations

from exercises.i18n import N_

PROGRAM_ERRORS: tuple[str, ...] = (
    N_("`{name}` is not defined: run its answer cell and keep the name exactly `{name}`"),
    N_("expected an nn.Module, got {type}"),
    N_("parameter names differ from the specification: expected parameters {expected}; missing {missing}; "
       "unexpected {unexpected}"),
    N_("parameter names differ from the specification: expected parameters {expected}; missing {missing}"),
    N_("parameter names differ from the specification: expected parameters {expected}; unexpected {unexpected}"),
    N_("parameter `{name}` has shape {shape}, expected {expected}"),
    N_("`{name}(...)` did not create an nn.Module"),
    N_("`{name}` is not callable"),
    N_("`{type}` has no attribute `{name}`"),
    N_("the output does not depend differentiably on the inputs (no grad_fn): do not call .detach(), .item(), "
       ".numpy() or torch.no_grad() in forward"),
)

# ``autograder/worker/main.py``'s own texts in a failed call's or cell's error (its exceptions' messages)
WORKER_ERRORS: tuple[str, ...] = (
    N_("the code called sys.exit({code}); remove it"),
    N_("no answer from the grader for the stand-in of `{name}`"),
    # the operation monitor's refusals inside a graded call (``exercises/op_guard.py``: the worker and the kernel)
    N_("starting a thread or a process is not allowed while a graded call runs"),
    N_("{found} is not allowed in this exercise: the data stays in torch tensors"),
    N_("the grader's monitor cannot be changed"),
    N_("{event} is not allowed while grading"),
)
