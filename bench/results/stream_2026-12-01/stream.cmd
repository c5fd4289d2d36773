python -m bench.stream --concurrency 8 --requests 1500 --rounds 4
# stream_first_version.log: at commit 433947f (a progressive request ended the in-call chain at every exit)
# stream.log: the change after it (progressive answers handed to the event loop while the chain runs on)
# both logs' unary rows came from bench/stream.py's own closed loop asking for label and exit_index; since then it reuses bench.protocols.run_surface (label only), the same loop otherwise
