#!/usr/bin/env bash
# Every benchmark in its --quick mode, so they never rot; CI checks that they
# run, not their figures. Run from anywhere; each script finds the repo root.
set -euo pipefail
cd "$(dirname "$0")/.."
for bench in bottlenecks training memory end_to_end tflite scale fine_tune second_half dashboards; do
  echo "== bench/$bench.py --quick"
  python "bench/$bench.py" --quick "$@"
done
echo "== bench/scale.py --quick --fine_tune_blocks 2"
python bench/scale.py --quick --fine_tune_blocks 2 "$@"
