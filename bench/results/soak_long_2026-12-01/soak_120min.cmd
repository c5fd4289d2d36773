python -u -m bench.soak --minutes 120 --sample-s 60 --clients 2
