python -m export evaluate runs/int8_new/auxnet56_5-cifar10-int8 --data ../shared/data/cifar10-jpeg/test
