"""Suite-wide settings that must be in place before any test module imports its dependencies."""

import os
import sys

import pytest
import torch

# the test-only support package (CPU platform for verl, test reward); installed as a package only in .venv-e2e
SUPPORT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support")
if SUPPORT_DIR not in sys.path:
    sys.path.insert(0, SUPPORT_DIR)

if not torch.cuda.is_available():
    # Without CUDA, Triton code can only run in Triton's interpreter. Triton fixes interpreter mode for its own
    # standard library when it is first imported (verl imports it too), so switch it on before anything does;
    # tests/test_triton_entropy.py runs the fused kernels this way on CPU tensors.
    os.environ.setdefault("TRITON_INTERPRET", "1")


# In CI (CI=true) and under AENT_REQUIRE_ALL=1 a skip is a failure unless it needs a CUDA device: a missing or broken
# dependency must not pass as "skipped" (aent_test_support.deps). The summary counts the skips that remain.
from aent_test_support.deps import CUDA_SKIP, strict  # noqa: E402 (found through SUPPORT_DIR)


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


def _fail_skip(report, where: str) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and strict():
        reason = _skip_reason(report)
        if not reason.startswith(CUDA_SKIP):
            report.outcome = "failed"
            report.longrepr = (
                f"{where} skipped in strict mode (CI or AENT_REQUIRE_ALL=1), where only '{CUDA_SKIP}' may skip: "
                f"{reason}"
            )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skip(outcome.get_result(), "test")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_skip(outcome.get_result(), "module")


def pytest_terminal_summary(terminalreporter):
    skipped = terminalreporter.stats.get("skipped", [])
    cuda = sum(_skip_reason(r).startswith(CUDA_SKIP) for r in skipped)
    mode = "strict (CI or AENT_REQUIRE_ALL=1)" if strict() else "not strict (set AENT_REQUIRE_ALL=1 to fail skips)"
    terminalreporter.write_line(
        f"aent: {len(skipped)} skipped, {cuda} of them '{CUDA_SKIP}', {len(skipped) - cuda} other; {mode}"
    )


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test: the demo's tiny model is overhead-bound, and one thread is as fast on an idle
    machine and far faster on a busy one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
