python -m export evaluate models/repository/auxnet56_5-cifar10 --data ../shared/data/cifar10-jpeg/test --json bench/results/cpu_cifar10jpeg_160ep/publish_evaluate_test.json
