python -m bench.int8_cpu --int8-model runs/int8_new/auxnet56_5-cifar10-int8
