python -m bench.policy_coverage --resamples 30 --confidence 0.8
