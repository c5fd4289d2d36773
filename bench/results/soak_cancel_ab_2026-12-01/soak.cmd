python -u -m bench.soak --minutes 12 --sample-s 60 --clients 4 --mix progressive_left=1
python -u -m bench.soak --minutes 12 --sample-s 60 --clients 4 --mix progressive_full=1
