# Alternating bench.serving runs: /tmp/base (memory patterns on, commit b46caf6) and /work/main (off on the CPU).
for i in 1 2 3 4 5; do
  for side in base new; do
    if [ $side = base ]; then dir=/tmp/base; else dir=/work/main; fi
    echo "== pair $i $side $(date -u +%H:%M:%S)"
    (cd $dir && /work/main/.venv/bin/python -m bench.serving > /tmp/pat/serving_${side}_$i.txt 2>&1)
  done
done
echo done $(date -u +%H:%M:%S)
