python -m server.demo 2>&1 | tail -12   # 2026-12-03 ~09:48 UTC, after publish, nothing else running
