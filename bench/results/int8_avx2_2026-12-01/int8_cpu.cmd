python -m bench.int8_cpu --int8-model models/repository-int8/auxnet56_5-cifar10-int8; python -m bench.int8_cpu --int8-model runs/int8_rr/auxnet56_5-cifar10-int8-rr
