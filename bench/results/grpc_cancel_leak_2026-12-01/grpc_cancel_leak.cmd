python -m bench.grpc_cancel_leak --calls 200000 --modes cancel,unary
python -m bench.grpc_cancel_leak --calls 100000 --modes full
python -m bench.grpc_cancel_leak --calls 100000 --modes cancel --gap-ms 0
python -m bench.grpc_cancel_leak --calls 100000 --modes cancel --gap-ms 0.2
