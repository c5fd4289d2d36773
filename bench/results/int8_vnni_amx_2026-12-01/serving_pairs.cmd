for i in 1 2 3: python -m bench.serving; python -m bench.serving --repo models/repository-int8   # three alternating pairs, 2026-12-01 ~10:12 UTC, idle machine
