python -u -m bench.soak --minutes 20 --sample-s 60 --clients 4 --mix classify=100
