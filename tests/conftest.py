"""Shared fixtures and device parametrisation for the whole suite."""

from __future__ import annotations

import pytest
import torch

# shard_fixtures' assertions explain their failures; registered here, before any test file imports it
pytest.register_assert_rewrite("shard_fixtures")

CUDA_AVAILABLE = torch.cuda.is_available()

needs_cuda = pytest.mark.needs_cuda


def cpu_and_cuda():
    """Parametrise a test over ``cpu`` and ``cuda``; the cuda case carries the ``needs_cuda`` marker."""
    return pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])


def pytest_collection_modifyitems(config, items):
    if CUDA_AVAILABLE:
        return
    skip = pytest.mark.skip(reason="GPU not exercised: no CUDA device on this machine")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    if not CUDA_AVAILABLE:
        terminalreporter.write_line("GPU not exercised: no CUDA device; every needs_cuda test was skipped.")


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The suite's tensors are tiny: one intra-op thread is faster, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def close_pyplot_figures():
    """Answers and lessons that plot with pyplot leave figures open; close them after each test."""
    yield
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")


@pytest.fixture(scope="module")
def warm_pool():
    """Warm workers (``autograder/pool.py``) for the tests that grade many notebooks in the worker, as the CLI
    does; shut down at the end of the module (a live warm worker would count as a leftover process in
    ``test_grader_hostile.py``'s daemon test). Bubblewrap where it works, the default limits with 30 s calls."""
    from autograder.pool import WorkerPool
    from autograder.runner import default_bwrap
    from autograder.sandbox import Limits

    pool = WorkerPool(Limits(call_timeout=30), default_bwrap())
    yield pool
    pool.shutdown()
