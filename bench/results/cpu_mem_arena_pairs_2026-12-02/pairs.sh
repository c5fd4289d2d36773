cd /work/main
for i in 1 2 3 4 5 6; do
  for mode in on off; do
    if [ $mode = off ]; then extra="--server-args --cpu-mem-arena=false"; else extra=""; fi
    echo "== pair $i arena $mode $(date -u +%H:%M:%S)"
    if [ $mode = off ]; then
      .venv/bin/python -m bench.serving --server-args "--cpu-mem-arena false" > /tmp/arena/serving_arena_${mode}_$i.txt 2>&1
    else
      .venv/bin/python -m bench.serving > /tmp/arena/serving_arena_${mode}_$i.txt 2>&1
    fi
  done
done
echo done $(date -u +%H:%M:%S)
