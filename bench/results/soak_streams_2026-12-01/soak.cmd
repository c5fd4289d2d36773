python -u -m bench.soak --minutes 30 --sample-s 60 --clients 4
