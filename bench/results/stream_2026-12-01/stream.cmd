python -m bench.stream --concurrency 8 --requests 1500 --rounds 4
# stream_first_version.log: at commit 433947f (a progressive request ended the in-call chain at every exit)
# stream.log: the change after it (progressive answers handed to the event loop while the chain runs on)
