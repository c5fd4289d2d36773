python -m bench.model_churn --cycles 30 --upload
python -m bench.model_churn --cycles 20 --upload --server-args='--workers 2'
python -m bench.model_churn --cycles 60 --upload
python -m bench.model_churn --cycles 60
