python -m bench.serving (twice)
