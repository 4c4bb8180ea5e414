#!/usr/bin/env bash
# The rows of docs/results/quant-core-smollm2.md, run one after the other (the machine's 2 cores are shared).
# Each row appends its final JSON line to $OUT. Usage: bash docs/results/run-quant-core-smollm2.sh [rows...]
set -u
OUT=${OUT:-docs/results/quant-core-smollm2.jsonl}
COMMON="--calib /work/shared/data/brown.txt --nsamples 16 --seqlen 512 \
 --eval-text /work/shared/data/austen/pride_and_prejudice.txt --ctx 512 --max-tokens 8192 --threads 1"
declare -A ROWS=(
  [fp]="--method fp"
  [rtn2]="--method rtn --bits 2"          [rtn3]="--method rtn --bits 3"
  [gptq2]="--method gptq --bits 2"        [gptq3]="--method gptq --bits 3"
  [slim2]="--method slim --bits 2"        [slim3]="--method slim --bits 3"
  [slim2-sba]="--method slim --bits 2 --no-sqc"  [slim3-sba]="--method slim --bits 3 --no-sqc"
  [slim2-sqc]="--method slim --bits 2 --no-sba"  [slim3-sqc]="--method slim --bits 3 --no-sba"
)
for r in "${@:-fp rtn2 gptq2 slim2 gptq3 slim3 slim2-sba slim2-sqc slim3-sba slim3-sqc rtn3}"; do
  for row in $r; do
    echo "== $row: slim2gguf eval demo ${ROWS[$row]} $COMMON" >&2
    .venv/bin/slim2gguf eval demo ${ROWS[$row]} $COMMON 2>> "${LOG:-/dev/null}" | tail -1 | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d['row']='$row'; print(json.dumps(d))" >> "$OUT"
  done
done
