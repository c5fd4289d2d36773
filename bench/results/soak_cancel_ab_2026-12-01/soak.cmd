python -u -m bench.soak --minutes 12 --sample-s 60 --clients 4 --mix progressive_left=1
python -u -m bench.soak --minutes 12 --sample-s 60 --clients 4 --mix progressive_full=1
python -u -m bench.soak --minutes 6 --sample-s 60 --clients 4 --mix progressive_left=1   # after server/grpc_log.py: soak_progressive_left_log_filter.log
