python -m bench.model_upload --workers 1 2 --rounds 5
