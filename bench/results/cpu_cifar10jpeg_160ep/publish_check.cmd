python -m export check models/repository/auxnet56_5-cifar10 --checkpoint models/checkpoints/auxnet56_5-pool4-mlp512-multiway-distill-cosine-cifar10jpeg-160ep-seed0.pt --rebuild
