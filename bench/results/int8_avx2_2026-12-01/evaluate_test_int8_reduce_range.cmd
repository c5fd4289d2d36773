python -m export evaluate runs/int8_rr/auxnet56_5-cifar10-int8-rr --data ../shared/data/cifar10-jpeg/test
