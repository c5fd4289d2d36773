python -m bench.int8_cpu --float-model models/repository/auxnet56_5-cifar10 --int8-model models/repository-int8/auxnet56_5-cifar10-int8
