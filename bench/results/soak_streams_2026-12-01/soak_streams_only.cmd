python -u -m bench.soak --minutes 40 --sample-s 60 --clients 4 --mix progressive=40,stream=40,corrupt_grpc=5,classify=15
