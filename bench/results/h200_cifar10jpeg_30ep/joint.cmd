python -m training.run --preset auxnet56_5 --method joint --dataset folder --data-dir /tmp/cifar10-jpeg --epochs 30 --seed 0 --workers 2 
