"""Shared test settings: a Hypothesis profile that keeps the suite fast and deterministic,
and a time limit for tests of inputs that once hung."""

import contextlib
import signal

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci")


class Hang(BaseException):
    """Raised by `time_limit` (a BaseException: no ``except Exception`` can hide it)."""


@pytest.fixture
def time_limit():
    """``with time_limit(seconds): …`` fails the test if the body runs longer.

    A bound on hangs (SIGALRM), not a speed test: set it far above the normal time.
    """

    @contextlib.contextmanager
    def limit(seconds: float):
        def fail(signum, frame):
            raise Hang(f"still running after {seconds} s")

        previous = signal.signal(signal.SIGALRM, fail)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    return limit
