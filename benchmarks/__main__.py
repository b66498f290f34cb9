"""``python -m benchmarks``: pin every library to one thread, then run the benchmarks.

The thread settings must be in the environment before NumPy, PyTorch or JAX is imported,
so they are set here, first; values already in the environment are kept.
"""

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

from benchmarks.runner import main  # noqa: E402  (after the thread settings)

raise SystemExit(main())
