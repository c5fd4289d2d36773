python -m export evaluate models/repository/auxnet56_5-cifar10 --data ../shared/data/cifar10-jpeg/test
