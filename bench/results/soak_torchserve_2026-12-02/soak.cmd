python -m bench.soak --minutes 10 --clients 4
