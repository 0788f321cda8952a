"""The worker protocol, in one place: the files of a worker's directory and the events it reports.

Copied into the worker's directory beside ``main.py``, ``program.py`` and ``op_guard.py`` (standard library only);
``autograder.runner`` imports it. The grader writes ``plan.json`` and one input file per call; the
worker appends one JSON event per line to ``progress.jsonl`` and writes one pair of output files per
call; a stand-in's request is a file too, and the grader's answer appears in ``answers/``, a folder
the worker can read but not change (the answer's JSON appears last, by rename, and releases the worker).
The grader reads every file here through ``autograder.safe_io`` (no links, no FIFOs, sizes bounded).
"""

PLAN = "plan.json"
PROGRESS = "progress.jsonl"  # made empty by the grader, which reads it through its own descriptor
ANSWERS = "answers"  # the grader's folder for stand-in answers (only in a run that planned stand-ins)

# events, in the order a healthy worker reports them
READY = "ready"  # start-up done (imports, plan, inputs, privilege drop): no student code has run before it
CELL_START, CELL_DONE = "cell_start", "cell_done"  # {"index": i}; done: {"error": {...}?, "defined": [...]}
CALL_START, CALL_DONE = "call_start", "call_done"  # {"id": n}; done: {"status": ..., "error": {...}, "guard": {...}?}
# "guard": the operation monitor's report (op_guard.OpGuard.report), only for calls the plan asked to watch
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
    """(tensors, JSON) of the grader's answer to request ``n``, in the ``ANSWERS`` folder."""
    return f"rpc_{n}_resp.safetensors", f"rpc_{n}_resp.json"


# --- warm mode (``main.py SLOT --zygote``, driven by ``autograder.pool``) ------------------------------
# The zygote reads one job directory name per line on stdin; it prints ZYGOTE_READY once its imports
# are done, then one ``job_done`` line per job (its other output, e.g. a traceback, is plain text).
ZYGOTE_READY = "selfattn-zygote-ready"
# said before a job's ``job_done`` when something of that job could not be cleared away in time: the zygote
# exits after it and must never be handed another job
ZYGOTE_RETIRED = "selfattn-zygote-retired"
OUTPUT = "output.txt"  # a forked job's stdout and stderr (a cold worker's go to a pipe)
JOB_PREFIX = "job-"


def valid_job_name(name: str) -> bool:
    """A job directory directly inside the zygote's slot: ``job-`` and hex digits, nothing else."""
    return name.startswith(JOB_PREFIX) and len(name) > len(JOB_PREFIX) and all(
        c in "0123456789abcdef" for c in name[len(JOB_PREFIX):])


def job_done(name: str, exit_code: int) -> str:
    """The zygote's line saying that job ``name``'s worker ended with ``exit_code`` (negative: a signal)."""
    return f"selfattn-job-done {name} {exit_code}"


def parse_job_done(line: str) -> tuple[str, int] | None:
    """(job name, exit code) from a ``job_done`` line, else None."""
    parts = line.split()
    if len(parts) == 3 and parts[0] == "selfattn-job-done" and valid_job_name(parts[1]):
        try:
            return parts[1], int(parts[2])
        except ValueError:
            return None
    return None
