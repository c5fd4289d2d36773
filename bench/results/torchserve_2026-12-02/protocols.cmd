python -m bench.protocols --rounds 3
