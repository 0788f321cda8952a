"""The grader's side of dependency stand-ins: answer a worker's request with the reference's result.

Failure isolation: when an item fails and it calls a graded name that is itself wrong, the item is
graded again with that name replaced by a stand-in inside the worker. The stand-in sends its
arguments here; the reference computes the answer in the grader's process and only the resulting
tensors go back, so no reference code ever enters the worker.
"""

from __future__ import annotations

from typing import Any

import torch

from exercises.i18n import tr
from exercises.judge import REFERENCE_LOCK
from exercises.program import ProgramError, run_program, serialise_outputs

MAX_ELEMENTS = 50_000_000


class OracleResponder:
    """Answers ``call`` (function), ``new`` (initial parameters) and ``forward`` (module) requests."""

    def __init__(self, allowed: dict[str, str]):
        import solutions

        self.allowed = allowed
        self.namespace = vars(solutions)
        self.begin_call()

    def begin_call(self) -> None:
        """A new call in the worker: the stand-ins' random stream starts over, as the reference's did.

        The reference ran each case after ``torch.manual_seed(0)``: module initialisation and dropout drew
        from that stream in order. The stand-ins of one call draw from one stream of their own, kept
        between requests, so their draws are the reference's, whatever else this process's threads do
        with the global generator meanwhile.
        """
        self.rng = torch.Generator().manual_seed(0).get_state()

    def __call__(self, request: dict[str, Any], tensors: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        with REFERENCE_LOCK:  # the global generator is this call's stream while the stand-in runs
            torch.set_rng_state(self.rng)
            try:
                return self._answer(request, tensors)
            finally:
                self.rng = torch.get_rng_state()

    def _answer(self, request: dict[str, Any], tensors: dict[str, torch.Tensor]) -> tuple[dict, dict]:
        name, kind = request.get("name"), request.get("kind")
        if name not in self.allowed or kind not in ("call", "new", "forward"):
            raise ProgramError(tr("no stand-in for `{name}`").format(name=name))
        if sum(t.numel() for t in tensors.values()) > MAX_ELEMENTS:
            raise ProgramError(tr("the stand-in's arguments are too large"))
        device = request.get("device", "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"
        if kind == "call":
            program = [{"op": "call", "fn": name, "args": request["args"], "kwargs": request["kwargs"], "out": "r"},
                       {"op": "output", "key": "out", "var": "r"}]
            raw = run_program(program, self.namespace, tensors, device, None)
            meta_tensors, meta = serialise_outputs(raw)
            return {"outputs": meta}, meta_tensors
        ctor = request["ctor"]
        module = run_program([{"op": "new", "cls": name, "args": ctor["args"], "kwargs": ctor["kwargs"], "out": "m"},
                              {"op": "output", "key": "m", "var": "m"}], self.namespace, {}, "cpu", None)["m"]
        if kind == "new":
            return {}, {k: p.detach().clone() for k, p in module.named_parameters()}
        params = {k[2:]: v for k, v in tensors.items() if k.startswith("p.")}
        dtype = next(iter(params.values())).dtype if params else torch.float32
        module = module.to(device=device, dtype=dtype)
        with torch.no_grad():
            for pname, param in module.named_parameters():
                param.copy_(params[pname].to(device))
        module.train(bool(request.get("training")))
        inputs = {k: v for k, v in tensors.items() if not k.startswith("p.")}
        program = [{"op": "call", "fn": "m", "args": request["args"], "kwargs": request["kwargs"], "out": "r"},
                   {"op": "output", "key": "out", "var": "r"}]
        raw = run_program(program, {"m": module}, inputs, device, None)
        out_tensors, meta = serialise_outputs(raw)
        return {"outputs": meta}, out_tensors
