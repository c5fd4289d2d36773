python -m training.run --preset auxnet56_5 --method none --dataset folder --data-dir /tmp/cifar10-jpeg --decode-cache /tmp/cifar10-decoded --epochs 53 --seed 0 --workers 2 --compile 
