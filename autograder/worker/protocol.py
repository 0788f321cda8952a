"""The worker protocol, in one place: the files of a worker's directory and the events it reports.

Copied into the worker's directory beside ``main.py`` and ``program.py`` (standard library only);
``autograder.runner`` imports it. The grader writes ``plan.json`` and one input file per call; the
worker appends one JSON event per line to ``progress.jsonl`` and writes one pair of output files per
call; a stand-in's request and the grader's answer are files too (the answer's JSON appears last,
by rename, and releases the worker).
"""

PLAN = "plan.json"
PROGRESS = "progress.jsonl"

# events, in the order a healthy worker reports them
READY = "ready"  # start-up done (imports, plan, inputs, privilege drop): no student code has run before it
CELL_START, CELL_DONE = "cell_start", "cell_done"  # {"index": i}; done: {"error": {...}?, "defined": [...]}
CALL_START, CALL_DONE = "call_start", "call_done"  # {"id": n}; done: {"status": ..., "error": {...}, "used": [...]}
RPC = "rpc"  # {"n": k}: a stand-in waits for the grader's answer to request k
FINISHED = "finished"  # every step done

# a call's outcome as the worker saw it: its outputs written, the student's exception, a step the program
# could not carry out (a name missing, ...), or the worker could not write the outputs (the grader decides
# whose fault that is)
CALL_STATUSES = ("ok", "exception", "program", "harness")
HARNESS_EXIT = 70  # EX_SOFTWARE: the worker's own start-up failed (the grader reports it, never the student)


def input_file(call_id: int) -> str:
    return f"in_{call_id}.safetensors"


def output_files(call_id: int) -> tuple[str, str]:
    """(tensors, metadata) of one call's outputs."""
    return f"out_{call_id}.safetensors", f"out_{call_id}.json"


def rpc_request(n: int) -> tuple[str, str]:
    """(tensors, JSON) of stand-in request ``n``, written by the worker."""
    return f"rpc_{n}_req.safetensors", f"rpc_{n}_req.json"


def rpc_response(n: int) -> tuple[str, str]:
    """(tensors, JSON) of the grader's answer to request ``n``."""
    return f"rpc_{n}_resp.safetensors", f"rpc_{n}_resp.json"
