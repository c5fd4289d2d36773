python -m training.run --depth 20 --exits 5,9,13,17,20 --method multiway --seed 0 --epochs 15  --dataset folder --data-dir ../shared/data/cifar10-jpeg --decode-cache runs/cifar10-decoded
