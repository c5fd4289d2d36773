python -m bench.paper_tables --runs bench/results/h200_cifar10jpeg_53ep --heads c_multiway_distill=bench/results/heads_mlp_2026-12-02/heads_c_pool4_mlp512.json
