import os

# Two cores here: keep torch from oversubscribing them while pytest runs servers beside it.
os.environ.setdefault("OMP_NUM_THREADS", "2")
