# Issue 10's runs a..g: one table for the GPU lease (bench/gpu/paper_runs.sh) and the CPU's long runs
# (bench/cpu_long_run.sh), sourced by both so a run of one name trains the same recipe on either machine
# (tests/bench/test_paper_recipes.py parses every entry with training.run's own parser).
# The paper's recipe unless said: batch 128, lr 0.1 divided by 10 at 40% and 60% of the epochs, wd 1e-4,
# momentum 0.9; the epochs, data and seed are each script's.
# shellcheck disable=SC2034  # read by the scripts that source this file
declare -A PAPER_RECIPES=(
  [a_multiway]="--preset auxnet56_5 --method multiway"
  [b_resnet56]="--preset auxnet56_5 --method none"  # ResNet-56: the heads trained as detached probes
  [c_multiway_distill]="--preset auxnet56_5 --method multiway --distill-weight 0.5 --distill-temperature 3 --schedule cosine --warmup-epochs 5"
  [d_joint]="--preset auxnet56_5 --method joint"
  [e_aux44]="--preset auxnet44_3 --method multiway"
  [e_resnet110]="--preset resnet110 --method none"
  [f_multiway_preact]="--preset auxnet56_5 --method multiway --preact-shortcut"  # review: shortcut after BN-ReLU?
  # c without distillation: c against a mixes two changes. In the CPU pilot (RESULTS §18, two seeds) cosine alone
  # gave the most accurate early exit, and distillation 6-10% cheaper exits for 0.4-0.9 pp of final accuracy.
  [g_multiway_cosine]="--preset auxnet56_5 --method multiway --schedule cosine --warmup-epochs 5"
)
