python -m bench.policy_coverage --resamples 40 --confidence 0.8 0.9
