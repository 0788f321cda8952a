"""Can a student reach or outrun the no-shortcut monitor? Every attack we know, and correct answers that must pass.

Each attack is an answer cell a determined student could write (issue 16, "A monitor the student cannot
reach or outrun"): the built-in run in another thread or process, an operator that no hand list names,
the monitor's objects reached and told to record nothing, torch's own helpers for the modes called
through ``getattr``, the data taken out to NumPy or Python lists, the exact softmax one query row at a time.
Each is graded by the real in-kernel check (``exercises.kernel.check``) and, in the slow tests at the end,
by the real worker, cold and forked from a warm zygote: each costs its item, with a reason that says what
happened, and only its item. Correct tiled answers written independently of the reference (and with names
such as ``softmax`` or ``_flash_attention_2_forward`` of their own) get full marks under the same rules.
"""

from __future__ import annotations

import linecache
import sys
from itertools import count
from pathlib import Path

import pytest
import torch

import solutions
from exercises import kernel, rules
from exercises.catalogue import ITEMS
from exercises.op_guard import FAMILIES, SOFTMAX, family_of, spans_keys

_cells = count()


def run_cell(source: str) -> dict:
    """Execute an answer cell as IPython does (a file name in ``linecache``), over the reference's names."""
    namespace = dict(vars(solutions))
    filename = f"/tmp/ipykernel_attacks/{next(_cells)}.py"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    exec(compile(source, filename, "exec"), namespace)
    return namespace


def withheld(item: str, source: str) -> str:
    """The in-kernel check's message for an answer that breaks ``item``'s rule (the whole item is withheld)."""
    with pytest.raises(AssertionError) as caught:
        kernel.check(item, run_cell(source), seed=5)
    return str(caught.value)


# --- building blocks of the attack cells -----------------------------------------------------------------------

EXACT = """
import math
import torch

def _exact(q, k, v, causal):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        n_q, n_k = s.shape[-2:]
        s = s.masked_fill(torch.ones(n_q, n_k, dtype=torch.bool, device=s.device).triu(1), float('-inf'))
    return torch.softmax(s, -1) @ v, torch.logsumexp(s, -1)
"""

ATTACKS_FORWARD = {
    "a thread runs the built-in softmax": EXACT + """
import threading

def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64):
    box = []
    worker = threading.Thread(target=lambda: box.append(_exact(q, k, v, causal)))
    worker.start()
    worker.join()
    return box[0]
""",
    "a thread pool runs it": EXACT + """
from concurrent.futures import ThreadPoolExecutor

def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64):
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(_exact, q, k, v, causal).result()
""",
    "the low-level _thread module runs it": EXACT + """
import _thread
import time

def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64):
    box = []
    _thread.start_new_thread(lambda: box.append(_exact(q, k, v, causal)), ())
    while not box:
        time.sleep(0.001)
    return box[0]
""",
    "a child process computes it": EXACT + """
import os
import pickle

def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64):
    read, write = os.pipe()
    if os.fork() == 0:
        os.write(write, pickle.dumps(_exact(q, k, v, causal)))
        os._exit(0)
    os.close(write)
    data = b''
    while chunk := os.read(read, 1 << 16):
        data += chunk
    return pickle.loads(data)
""",
    "the exact softmax one query row at a time": """
import torch

def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64):
    scale = q.shape[-1] ** -0.5
    outs, lses = [], []
    for i in range(q.shape[-2]):
        s = (q[..., i:i + 1, :] @ k.transpose(-2, -1)) * scale  # (..., 1, n_k): a whole row of scores
        if causal:
            s[..., i + 1:] = float('-inf')
        m = s.amax(-1, keepdim=True)
        p = torch.exp(s - m)
        l = p.sum(-1, keepdim=True)
        outs.append((p / l) @ v)
        lses.append((m + l.log()).squeeze(-1))
    return torch.cat(outs, -2), torch.cat(lses, -1)
""",
    "the exact softmax of a row as a vector (einsum)": """
import torch

def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64):
    scale = q.shape[-1] ** -0.5
    outs, lses = [], []
    for i in range(q.shape[-2]):
        s = torch.einsum('...d,...kd->...k', q[..., i, :], k) * scale  # (..., n_k)
        if causal:
            s[..., i + 1:] = float('-inf')
        lse = torch.logsumexp(s, -1)
        outs.append(torch.einsum('...k,...kv->...v', torch.exp(s - lse[..., None]), v))
        lses.append(lse)
    return torch.stack(outs, -2), torch.stack(lses, -1)
""",
    "NumPy does the work": """
import numpy as np
import torch

def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64):
    qn, kn, vn = (np.asarray(t) for t in (q, k, v))
    s = qn @ np.swapaxes(kn, -1, -2) / np.sqrt(qn.shape[-1])
    if causal:
        s = np.where(np.triu(np.ones(s.shape[-2:], dtype=bool), 1), -np.inf, s)
    m = s.max(-1, keepdims=True)
    lse = m + np.log(np.exp(s - m).sum(-1, keepdims=True))
    out = np.exp(s - lse) @ vn
    return torch.from_numpy(out).to(q.dtype), torch.from_numpy(lse[..., 0]).to(q.dtype)
""",
    "Tensor.numpy does the work": """
import numpy as np
import torch

def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64):
    qn, kn, vn = q.numpy(), k.numpy(), v.numpy()
    s = qn @ np.swapaxes(kn, -1, -2) / np.sqrt(qn.shape[-1])
    if causal:
        s = np.where(np.triu(np.ones(s.shape[-2:], dtype=bool), 1), -np.inf, s)
    m = s.max(-1, keepdims=True)
    lse = m + np.log(np.exp(s - m).sum(-1, keepdims=True))
    return torch.from_numpy(np.exp(s - lse) @ vn), torch.from_numpy(lse[..., 0])
""",
    "Python lists do the work": """
import math
import torch

def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64):
    Q, K, V = q.reshape(-1, *q.shape[-2:]).tolist(), k.reshape(-1, *k.shape[-2:]).tolist(), \\
        v.reshape(-1, *v.shape[-2:]).tolist()
    return _lists(Q, K, V, causal, q)

def _lists(Q, K, V, causal, q):
    raise NotImplementedError  # never reached: tolist is refused
""",
    "numbers read out one by one": """
import math
import torch

def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64):
    flat = [float(x) for x in q.reshape(-1)] + [float(x) for x in k.reshape(-1)]
    return solutions_forward(q, k, v, causal, block_q, block_k)

from solutions import flash_attention_forward as solutions_forward
""",
}


@pytest.mark.parametrize("attack", ATTACKS_FORWARD)
def test_is_every_attack_on_the_tiled_forward_withheld_by_the_kernel_check(attack):
    message = withheld("flash_attention_forward", ATTACKS_FORWARD[attack])
    expected = {
        "a thread runs the built-in softmax": "the code started a thread or a process",
        "a thread pool runs it": "the code started a thread or a process",
        "the low-level _thread module runs it": "the code started a thread or a process",
        "a child process computes it": "the code started a thread or a process (fork)",
        "the exact softmax one query row at a time": "holds more keys for a query row than one key block",
        "the exact softmax of a row as a vector (einsum)": "holds more keys for a query row than one key block",
        "NumPy does the work": "took the tensors' data out of torch (Tensor.__array__)",
        "Tensor.numpy does the work": "took the tensors' data out of torch (Tensor.numpy)",
        "Python lists do the work": "took the tensors' data out of torch (Tensor.tolist)",
        "numbers read out one by one": "numbers read out of tensors one by one (Tensor.__float__)",
    }[attack]
    assert expected in message and "its points for this part are withheld" in message, message


def test_is_a_thread_started_before_the_call_seen_when_it_works_during_it():
    """A thread started by the answer cell itself (no guard is open then) serving the graded calls."""
    cell = EXACT + """
import queue
import threading

_jobs, _results = queue.Queue(), queue.Queue()

def _serve():
    while (job := _jobs.get()) is not None:
        _results.put(_exact(*job))

_server = threading.Thread(target=_serve, daemon=True)
_server.start()

def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64):
    _jobs.put((q, k, v, causal))
    return _results.get()
"""
    namespace = run_cell(cell)
    try:
        with pytest.raises(AssertionError) as caught:
            kernel.check("flash_attention_forward", namespace, seed=5)
    finally:
        namespace["_jobs"].put(None)
        namespace["_server"].join(5)
    assert "another thread of the code was running" in str(caught.value), caught.value


def test_is_a_sparse_softmax_with_every_entry_explicit_a_softmax():
    """No hand list named it: ``aten._sparse_softmax`` is in the family because torch's registry says softmax."""
    assert family_of("aten::_sparse_softmax") == SOFTMAX and family_of("_sparse_log_softmax.default") == SOFTMAX
    cell = ("import torch\ndef softmax_stable(x, dim=-1):\n"
            "    return torch.sparse.softmax(x.to_sparse(), dim).to_dense()\n")
    message = withheld("softmax_stable", cell)
    assert "may not use the built-in softmax" in message, message


def test_are_the_families_read_from_torchs_registry():
    """Every aten operator whose name says softmax, attention or sdp is in a family; nothing else is."""
    ops = {op.split("::")[1].split(".")[0] for op in torch._C._dispatch_get_all_op_names() if op.startswith("aten::")}
    named = {op for op in ops if any(w in op for w in ("softmax", "attention", "sdp"))}
    assert named and named <= set(FAMILIES), named - set(FAMILIES)
    assert not {"exp", "logsumexp", "matmul", "bmm", "amax", "softplus"} & set(FAMILIES)


REACH = {
    "the mode stack, told to record nothing": """
import torch

class _Never(dict):
    def __contains__(self, key):
        return True
    def __setitem__(self, key, value):
        pass

def softmax_stable(x, dim=-1):
    for i in range(torch._C._len_torch_dispatch_stack()):
        mode = torch._C._get_dispatch_stack_at(i)
        if hasattr(mode, 'guard'):
            mode.guard.used = _Never()
    return torch.softmax(x, dim)
""",
    "torch's helpers for the modes through getattr": """
import torch

def softmax_stable(x, dim=-1):
    functions = getattr(__import__('torch.overrides', fromlist=['x']), '_pop_mode_' + 'temporarily')
    dispatch = getattr(__import__('torch.utils._python_dispatch', fromlist=['x']), '_pop_mode_' + 'temporarily')
    with functions(), dispatch():
        return torch.softmax(x, dim)
""",
    "gc finds the monitor": """
import gc
import torch

def softmax_stable(x, dim=-1):
    for obj in gc.get_objects():
        if type(obj).__name__ == 'OpGuard':
            obj.used, obj.tampered = {}, None
    return torch.softmax(x, dim)
""",
    "the monitor's class patched to report nothing": """
import sys
import torch

def softmax_stable(x, dim=-1):
    guard_module = sys.modules.get('exercises.op_guard') or sys.modules['__main__'].op_guard
    guard_module.OpGuard.report = lambda self: {'used': {}, 'too_big': None, 'wide': None, 'exported': None,
                                                'tampered': None}
    return torch.softmax(x, dim)
""",
}


@pytest.mark.parametrize("attack", REACH)
def test_is_reaching_for_the_monitor_caught(attack, monkeypatch):
    from exercises.op_guard import OpGuard

    monkeypatch.setattr(OpGuard, "report", OpGuard.report)  # put back after the attack that replaces it
    message = withheld("softmax_stable", REACH[attack].replace("torch.softmax(x, dim)",
                                                               "getattr(torch, 'soft' + 'max')(x, dim)"))
    assert "switched off the grader's operation monitor" in message or (
        attack == "the mode stack, told to record nothing" and "may not use the built-in softmax" in message), message


def test_is_rebinding_the_monitors_functions_caught():
    """Module globals cannot be protected in Python; the audit hook compares them at every close."""
    module = sys.modules["exercises.op_guard"]
    original = module.family_of
    cell = ("import sys, torch\nsys.modules['exercises.op_guard'].family_of = lambda name: None\n"
            "def softmax_stable(x, dim=-1):\n    return getattr(torch, 'soft' + 'max')(x, dim)\n")
    try:
        message = withheld("softmax_stable", cell)
    finally:
        module.family_of = original
    assert "the code changed the monitor's family_of" in message, message


# --- correct answers under the same rules --------------------------------------------------------------------

# Written for this suite after the shapes of public FlashAttention-2 ports in PyTorch (CS336 assignment 2
# students' "program id" tiles, the paper's Algorithm 1 with T_q x T_k tiles, FlashAttention-1's key-outer
# loop), with names of their own that once looked like torch's to the grader.
TILED_FORWARDS = {
    "program-id tiles, a helper named _flash_attention_2_forward": """
import math
import torch

def softmax(x):  # the student's own helper, never torch's
    e = torch.exp(x - x.amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)

def _flash_attention_2_forward(q, k, v, o, L, q_tile, k_tile, program_id, causal, window):
    batch = q.shape[:-2]
    start = q_tile * program_id
    qi = q[..., start:start + q_tile, :]
    rows = qi.shape[-2]
    m = torch.full([*batch, rows], -torch.inf, dtype=q.dtype)
    l = torch.zeros([*batch, rows], dtype=q.dtype)
    acc = torch.zeros([*batch, rows, v.shape[-1]], dtype=q.dtype)
    for j in range(0, k.shape[-2], k_tile):
        s = qi @ k[..., j:j + k_tile, :].transpose(-1, -2) / math.sqrt(q.shape[-1])
        if causal:
            qpos = torch.arange(start, start + rows)[:, None]
            kpos = torch.arange(j, j + s.shape[-1])[None, :]
            s = s.masked_fill(kpos > qpos, -torch.inf)
            if window is not None:
                s = s.masked_fill(qpos - kpos >= window, -torch.inf)
        m_new = torch.maximum(m, s.amax(-1))
        shift = torch.where(m_new == -torch.inf, 0.0, m_new)  # a row the window hides in this tile
        p = torch.exp(s - shift[..., None])
        alpha = torch.exp(m - shift)
        l = alpha * l + p.sum(-1)
        acc = alpha[..., None] * acc + p @ v[..., j:j + k_tile, :]
        m = m_new
    o[..., start:start + rows, :] = acc / l[..., None]
    L[..., start:start + rows] = m + torch.log(l)

def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64, window_size=None):
    o = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype)
    L = torch.empty(q.shape[:-1], dtype=q.dtype)
    for program_id in range(math.ceil(q.shape[-2] / block_q)):
        _flash_attention_2_forward(q, k, v, o, L, block_q, block_k, program_id, causal or window_size is not None,
                                   window_size)
    return o, L
""",
    "Algorithm 1, T_q x T_k tiles, a variable named softmax": """
import math
import torch

def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64, window_size=None):
    causal = causal or window_size is not None
    N_q, d = q.shape[-2:]
    N_k = k.shape[-2]
    T_q, T_k = math.ceil(N_q / block_q), math.ceil(N_k / block_k)
    O, L = [], []
    for i in range(T_q):
        Q_i = q[..., i * block_q:(i + 1) * block_q, :]
        O_i = torch.zeros(*Q_i.shape[:-1], v.shape[-1], dtype=q.dtype)
        l_i = torch.zeros(Q_i.shape[:-1], dtype=q.dtype)
        m_i = torch.full(Q_i.shape[:-1], float('-inf'), dtype=q.dtype)
        for j in range(T_k):
            if causal and j * block_k > (i + 1) * block_q - 1:
                break
            K_j, V_j = k[..., j * block_k:(j + 1) * block_k, :], v[..., j * block_k:(j + 1) * block_k, :]
            S_ij = torch.einsum('...qd,...kd->...qk', Q_i, K_j) / math.sqrt(d)
            if causal:
                q_idx = torch.arange(i * block_q, i * block_q + S_ij.shape[-2]).unsqueeze(-1)
                k_idx = torch.arange(j * block_k, j * block_k + S_ij.shape[-1]).unsqueeze(0)
                S_ij = torch.where(k_idx <= q_idx, S_ij, torch.full_like(S_ij, float('-inf')))
                if window_size is not None:
                    S_ij = torch.where(q_idx - k_idx < window_size, S_ij, torch.full_like(S_ij, float('-inf')))
            m_new = torch.maximum(m_i, S_ij.max(dim=-1).values)
            shift = torch.where(m_new == float('-inf'), torch.zeros_like(m_new), m_new)  # rows the window hides
            softmax = torch.exp(S_ij - shift.unsqueeze(-1))  # unnormalised tile weights
            scale = torch.exp(m_i - shift)
            l_i = scale * l_i + softmax.sum(-1)
            O_i = scale.unsqueeze(-1) * O_i + torch.einsum('...qk,...kv->...qv', softmax, V_j)
            m_i = m_new
        O.append(O_i / l_i.unsqueeze(-1))
        L.append(m_i + torch.log(l_i))
    return torch.cat(O, dim=-2), torch.cat(L, dim=-1)
""",
    "key blocks outside, query blocks inside (FlashAttention-1's order)": """
import math
import torch

class _scaled_dot_product_tiles:  # a name of the student's own
    def __init__(self, q, v):
        self.m = torch.full(q.shape[:-1], -math.inf, dtype=q.dtype)
        self.l = torch.zeros(q.shape[:-1], dtype=q.dtype)
        self.o = torch.zeros(*q.shape[:-1], v.shape[-1], dtype=q.dtype)

def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64, window_size=None):
    causal = causal or window_size is not None
    n_q, n_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    state = _scaled_dot_product_tiles(q, v)
    for j in range(0, n_k, block_k):
        kj, vj = k[..., j:j + block_k, :], v[..., j:j + block_k, :]
        for i in range(0, n_q, block_q):
            qi = q[..., i:i + block_q, :]
            s = qi @ kj.transpose(-2, -1) / math.sqrt(d)
            if causal:
                later = torch.arange(j, j + kj.shape[-2])[None, :] > torch.arange(i, i + qi.shape[-2])[:, None]
                s = s.masked_fill(later, -math.inf)
                if window_size is not None:
                    far = torch.arange(i, i + qi.shape[-2])[:, None] - torch.arange(j, j + kj.shape[-2])[None, :]
                    s = s.masked_fill(far >= window_size, -math.inf)
            m_old, l_old = state.m[..., i:i + block_q], state.l[..., i:i + block_q]
            m_tile = s.amax(-1)
            m_new = torch.maximum(m_old, m_tile)
            safe = torch.where(m_new == -math.inf, torch.zeros_like(m_new), m_new)
            p = torch.exp(s - safe[..., None])
            l_new = torch.exp(m_old - safe) * l_old + p.sum(-1)
            o_old = state.o[..., i:i + block_q, :]
            o_new = (torch.exp(m_old - safe)[..., None] * l_old[..., None] * o_old + p @ vj) / \\
                torch.where(l_new == 0, torch.ones_like(l_new), l_new)[..., None]
            state.o[..., i:i + block_q, :] = o_new
            state.m[..., i:i + block_q], state.l[..., i:i + block_q] = m_new, l_new
    return state.o, state.m + torch.log(state.l)
""",
}


WHOLE_MASK = """
import math
import torch

def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64):
    n_q, n_k = q.shape[-2], k.shape[-2]
    bias = torch.zeros(n_q, n_k, dtype=q.dtype)
    if causal:
        bias = bias.masked_fill(torch.ones(n_q, n_k, dtype=torch.bool).triu(1), -math.inf)
    outs, lses = [], []
    for i in range(0, n_q, block_q):
        qi = q[..., i:i + block_q, :] / math.sqrt(q.shape[-1])
        m = torch.full(qi.shape[:-1], -math.inf, dtype=q.dtype)
        l = torch.zeros(qi.shape[:-1], dtype=q.dtype)
        acc = torch.zeros(*qi.shape[:-1], v.shape[-1], dtype=q.dtype)
        for j in range(0, n_k, block_k):
            s = qi @ k[..., j:j + block_k, :].transpose(-2, -1) + bias[i:i + block_q, j:j + block_k]
            m_new = torch.maximum(m, s.amax(-1))
            p = torch.exp(s - m_new[..., None])
            l = torch.exp(m - m_new) * l + p.sum(-1)
            acc = torch.exp(m - m_new)[..., None] * acc + p @ v[..., j:j + block_k, :]
            m = m_new
        outs.append(acc / l[..., None])
        lses.append(m + torch.log(l))
    return torch.cat(outs, -2), torch.cat(lses, -1)
"""


TILED_FORWARDS["a number read out per tile, to skip the tiles the mask hides"] = """
import math
import torch

def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64, window_size=None):
    causal = causal or window_size is not None
    outs, lses = [], []
    for i in range(0, q.shape[-2], block_q):
        qi = q[..., i:i + block_q, :] / math.sqrt(q.shape[-1])
        m = torch.full(qi.shape[:-1], -math.inf, dtype=q.dtype)
        l = torch.zeros(qi.shape[:-1], dtype=q.dtype)
        acc = torch.zeros(*qi.shape[:-1], v.shape[-1], dtype=q.dtype)
        rows = torch.arange(i, i + qi.shape[-2])
        for j in range(0, k.shape[-2], block_k):
            cols = torch.arange(j, j + k[..., j:j + block_k, :].shape[-2])
            hidden = cols[None, :] > rows[:, None]
            if window_size is not None:
                hidden = hidden | (rows[:, None] - cols[None, :] >= window_size)
            if causal and bool(hidden.all().item()):  # one number per tile
                continue
            s = qi @ k[..., j:j + block_k, :].transpose(-2, -1)
            if causal:
                s = s.masked_fill(hidden, -math.inf)
            m_new = torch.maximum(m, s.amax(-1))
            shift = torch.where(m_new == -math.inf, torch.zeros_like(m_new), m_new)  # rows the window hides
            p = torch.exp(s - shift[..., None])
            l = torch.exp(m - shift) * l + p.sum(-1)
            acc = torch.exp(m - shift)[..., None] * acc + p @ v[..., j:j + block_k, :]
            m = m_new
        outs.append(acc / l[..., None])
        lses.append(m + torch.log(l))
    return torch.cat(outs, -2), torch.cat(lses, -1)
"""


@pytest.mark.parametrize("implementation", TILED_FORWARDS)
def test_does_an_independent_tiled_forward_get_full_marks(implementation):
    assert kernel.check("flash_attention_forward", run_cell(TILED_FORWARDS[implementation]), seed=5) is None


def test_is_a_whole_mask_the_size_rules_business_not_the_tiled_rules(capsys):
    """An additive (n_q, n_k) mask of 0 and -inf, sliced per tile, holds no scores: the large cases fail it (the size
    rule, case by case), the tiled rule does not withhold the item."""
    partial = kernel.check("flash_attention_forward", run_cell(WHOLE_MASK), seed=5)
    assert partial is not None and partial > 0
    assert "must never build the full (n_q, n_k) score matrix" in capsys.readouterr().out


def test_are_a_students_own_names_like_torchs_not_the_built_in():
    source = TILED_FORWARDS["program-id tiles, a helper named _flash_attention_2_forward"]
    assert rules.static_forbidden_calls(source) == set()
    assert rules.static_forbidden_calls("import torch\ny = torch.softmax(x, -1)\n") == {SOFTMAX}
    assert rules.static_forbidden_calls("from torch.nn.functional import softmax\n") == {SOFTMAX}
    assert rules.static_forbidden_calls("def f(x):\n    return x.softmax(-1)\n") == {SOFTMAX}
    own = "class A:\n    def softmax(self, x):\n        return x\n    def f(self, x):\n        return self.softmax(x)\n"
    assert rules.static_forbidden_calls(own) == set()


def test_does_the_tiled_rule_say_what_a_row_of_scores_is():
    """(n_q=5, n_k=11, blocks of 2 queries and 4 keys, d=4, d_v=2): a row of 11 keys breaks it; tiles, K, V,
    their transposes, lse and a whole column of key-block scores keep to it."""
    span = {"n_q": 5, "n_k": 11, "block_q": 2, "block_k": 4, "features": [2, 4]}
    for shape in [(3, 1, 11), (11,), (3, 11), (3, 3, 11), (3, 11, 1), (3, 1, 7)]:
        assert spans_keys(shape, span), shape
    for shape in [(3, 2, 4), (3, 11, 4), (3, 4, 11), (3, 11, 2), (3, 5), (3, 5, 4), (3, 5, 1), (6, 1, 1), (3, 4, 2)]:
        assert not spans_keys(shape, span), shape
    assert not spans_keys((3, 1, 11), {**span, "n_q": 11})  # n_q = n_k: undecidable, not checked


def test_are_the_tiled_rules_sizes_read_from_the_cases():
    spans = [rules.span_rule(case) for name in ("online_softmax_attention", "flash_attention_forward",
                                                 "flash_attention_backward", "FlashAttentionFunction",
                                                 "flash_attention") for case in ITEMS[name].cases(1, "float64")]
    assert all(span is not None for span in spans[:-1])
    assert {"n_q": 5, "n_k": 11, "block_q": 2, "block_k": 4, "features": [2, 4]} in spans
    assert rules.span_rule(ITEMS["scaled_dot_product_attention"].cases(1, "float64")[0]) is None


# --- through the real worker, cold and forked ------------------------------------------------------------------

def _grade(tmp_path: Path, notebook: str, overrides: dict[str, str], warm: bool) -> dict[str, list]:
    from test_op_guard import _grade as grade

    return grade(tmp_path, notebook, overrides, warm=warm)


def _worker_attack(source: str) -> str:
    """A lesson 1 attack as the worker sees it: the monitor is ``sys.modules['__main__'].op_guard`` there."""
    return source.replace("sys.modules.get('exercises.op_guard') or ", "")


def _as(source: str, signature: str, result: str = "box[0]") -> str:
    """An attack on ``flash_attention_forward`` turned into one on another item (``signature``: its ``def`` line)."""
    return source.replace("def flash_attention_forward(q, k, v, causal=False, block_q=64, block_k=64):",
                          signature).replace("return box[0]", f"return {result}")


ONLINE = "def online_softmax_attention(q, k, v, block_size=64, causal=False):"
WRAPPER = "def flash_attention(q, k, v, causal=False, block_q=64, block_k=64):"
SERVER = EXACT + """
import queue
import threading

_jobs, _results = queue.Queue(), queue.Queue()

def _serve():
    while True:
        _results.put(_exact(*_jobs.get())[0])

threading.Thread(target=_serve, daemon=True).start()

def flash_attention(q, k, v, causal=False, block_q=64, block_k=64):
    _jobs.put((q, k, v, causal))
    return _results.get()
"""
# (notebook, the attacked items' answer cells, the reason each must give, items that must pass untouched)
WORKER_SCENARIOS = {
    "a thread": ("09_flash_attention_forward.ipynb", {
        "online_softmax_attention": _as(ATTACKS_FORWARD["a thread runs the built-in softmax"], ONLINE, "box[0][0]"),
    }, {"online_softmax_attention": "the code started a thread or a process"},
        ("sliding_window_mask", "flash_attention_forward")),
    "NumPy": ("10_flash_attention_backward.ipynb", {
        "flash_attention": _as(ATTACKS_FORWARD["NumPy does the work"], WRAPPER).replace(
            "np.asarray(t) for t in (q, k, v)", "np.asarray(t.detach()) for t in (q, k, v)").replace(
            "return torch.from_numpy(out).to(q.dtype), torch.from_numpy(lse[..., 0]).to(q.dtype)",
            "return torch.from_numpy(out).to(q.dtype)"),
    }, {"flash_attention": "took the tensors' data out of torch (Tensor.__array__)"},
        ("flash_attention_backward", "FlashAttentionFunction")),
    "fork": ("09_flash_attention_forward.ipynb", {
        "online_softmax_attention": _as(ATTACKS_FORWARD["a child process computes it"], ONLINE).replace(
            "return pickle.loads(data)", "return pickle.loads(data)[0]"),
    }, {"online_softmax_attention": "the code started a thread or a process (fork)"},
        ("sliding_window_mask", "flash_attention_forward")),
    # a thread a cell leaves running runs beside every watched call after it: each of them is withheld
    "a thread started by a cell": ("10_flash_attention_backward.ipynb", {"flash_attention": SERVER}, dict.fromkeys(
        ("flash_attention", "flash_attention_backward", "FlashAttentionFunction"),
        "another thread of the code was running"), ()),
    "row by row": ("09_flash_attention_forward.ipynb", {
        "flash_attention_forward": ATTACKS_FORWARD["the exact softmax one query row at a time"],
    }, {"flash_attention_forward": "holds more keys for a query row than one key block"},
        ("sliding_window_mask", "online_softmax_attention")),
    "the monitor patched, gc": ("01_attention_scores.ipynb", {
        "softmax_stable": _worker_attack(REACH["the monitor's class patched to report nothing"]),
        "softmax_naive": REACH["gc finds the monitor"].replace("softmax_stable", "softmax_naive"),
    }, {"softmax_stable": "the code changed the monitor's OpGuard", "softmax_naive": "the code called gc.get_objects"},
        ("attention_scores", "context_vectors")),
    "the mode stack, torch's helpers": ("01_attention_scores.ipynb", {
        "softmax_stable": REACH["the mode stack, told to record nothing"].replace(
            "torch.softmax(x, dim)", "getattr(torch, 'soft' + 'max')(x, dim)"),
        "softmax_naive": REACH["torch's helpers for the modes through getattr"].replace(
            "softmax_stable", "softmax_naive").replace("torch.softmax(x, dim)",
                                                       "getattr(torch, 'soft' + 'max')(x, dim)"),
    }, {"softmax_stable": "the code called _get_dispatch_stack_at", "softmax_naive": "the code called _pop_torch_"},
        ("attention_scores", "context_vectors")),
    "a sparse softmax": ("01_attention_scores.ipynb", {
        "softmax_naive": "import torch\ndef softmax_naive(x, dim=-1):\n"
                         "    return torch.sparse.softmax(x.to_sparse(), dim).to_dense()\n",
    }, {"softmax_naive": "may not use the built-in softmax (reached through"},
        ("softmax_stable", "attention_scores", "context_vectors")),
    # the monitor's function rebound by a cell: every watched call after it is withheld
    "the monitor's function rebound": ("01_attention_scores.ipynb", {
        "softmax_stable": ("import sys, torch\nsys.modules['__main__'].op_guard.family_of = lambda name: None\n"
                           "def softmax_stable(x, dim=-1):\n    return getattr(torch, 'soft' + 'max')(x, dim)\n"),
    }, dict.fromkeys(("softmax_stable", "softmax_naive"), "the code changed the monitor's family_of"),
        ("attention_scores", "context_vectors")),
    # an empty reason posted to the monitor's record first, then both levels switched off: the post is tampering
    "a forged post to the record": ("01_attention_scores.ipynb", {
        "softmax_stable": ("import sys, torch\ndef softmax_stable(x, dim=-1):\n"
                           "    sys.audit('grader.op_guard.post', None, 'tampered', '')\n"
                           "    with getattr(torch._C, '_Disable' + 'TorchDispatch')(), "
                           "getattr(torch._C, 'Disable' + 'TorchFunction')():\n"
                           "        return getattr(torch, 'soft' + 'max')(x, dim)\n"),
    }, {"softmax_stable": "the code wrote to the monitor's record"}, ("softmax_naive", "attention_scores")),
}


@pytest.mark.slow
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "forked"])
@pytest.mark.parametrize("scenario", WORKER_SCENARIOS)
def test_are_the_attacks_withheld_in_the_worker_and_nothing_else(tmp_path, warm, scenario):
    notebook, overrides, reasons, untouched = WORKER_SCENARIOS[scenario]
    rows = _grade(tmp_path, notebook, overrides, warm=warm)
    for item, reason in reasons.items():
        assert rows[item] and all(r.score == 0 and r.forbidden and reason in r.message for r in rows[item]), rows[item]
    # only those items: the rest of the notebook is graded as usual
    for item in untouched:
        assert rows[item] and all(r.status == "passed" for r in rows[item]), rows[item]


@pytest.mark.slow
def test_does_an_independent_tiled_forward_get_full_marks_in_the_worker(tmp_path):
    rows = _grade(tmp_path, "09_flash_attention_forward.ipynb", warm=True, overrides={
        "flash_attention_forward": TILED_FORWARDS["program-id tiles, a helper named _flash_attention_2_forward"]})
    assert all(r.status == "passed" for item in rows.values() for r in item), rows
