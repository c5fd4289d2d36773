python -m bench.recycle --seconds 60 --min-age-s 3   # once with net.ipv4.tcp_migrate_req=0 (recycle_migrate0.log), once with 1 (recycle_migrate1.log)
