python -m bench.stream --concurrency 8 --requests 1500 --rounds 4
