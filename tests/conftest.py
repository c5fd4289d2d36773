import os

# Two cores here: keep torch from oversubscribing them while pytest runs servers beside it.
os.environ.setdefault("OMP_NUM_THREADS", "2")

from tests.conftest_models import tiny_repo, tiny_run  # noqa: E402,F401  (shared fixtures)
