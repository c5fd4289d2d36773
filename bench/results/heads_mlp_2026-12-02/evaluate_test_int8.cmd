python -m export evaluate models/repository-int8/auxnet56_5-cifar10-int8 --data ../shared/data/cifar10-jpeg/test
