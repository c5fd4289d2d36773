python -m bench.int8_cpu --int8-model models/repository-int8/auxnet56_5-cifar10-int8
python -m bench.int8_cpu --int8-model runs/int8_full/auxnet56_5-cifar10-int8-full
python -m bench.int8_cpu --float-model models/repository-int8/auxnet56_5-cifar10-int8 --int8-model runs/int8_full/auxnet56_5-cifar10-int8-full --per-class 10 --rounds 7   # 7-bit ('float' column) against 8-bit ('int8' column), alternating rounds
