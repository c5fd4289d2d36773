python -m bench.grpc_cancel_leak --calls 200000 --modes cancel,unary
python -m bench.grpc_cancel_leak --calls 100000 --modes full
