"""``python -m benchmarks``: pin every library to one thread, then run the benchmarks.

The thread settings must be in the environment before NumPy, PyTorch or JAX is imported,
so they are set here, first; values already in the environment are kept. The process is
also pinned to one CPU (where the OS allows it): XLA's CPU backend runs large matrix
products on a second core whatever its flags say (measured: 1.7 CPU seconds per wall
second for a 100 × 1000 by 1000 × 1000 product), and pinning is the one setting every
library obeys.
"""

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

from benchmarks.runner import main  # noqa: E402  (after the thread settings)

raise SystemExit(main())
