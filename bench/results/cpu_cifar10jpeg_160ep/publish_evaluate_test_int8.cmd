python -m export evaluate models/repository-int8/auxnet56_5-cifar10-int8 --data ../shared/data/cifar10-jpeg/test --json bench/results/cpu_cifar10jpeg_160ep/publish_evaluate_test_int8.json
