python -m bench.policy_coverage --onnx-model models/repository-int8/auxnet56_5-cifar10-int8 --score margin --resamples 40 --confidence 0.8 0.9   # the 7-bit twin (after the re-export)
