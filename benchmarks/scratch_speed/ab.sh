#!/bin/sh
# usage: ab.sh A.so B.so model [n] ; alternates A/B twice, prints best cpu ms/tok
cd /work/wt/speed
for i in 1 2; do
  for v in "$1" "$2"; do
    cp "$v" pyllama_q/_pq.abi3.so
    printf "%s " "$(basename $v)"; .venv/bin/python benchmarks/scratch_speed/dec.py "$3" "${4:-48}" "${5:-1}" | tail -1
  done
done
