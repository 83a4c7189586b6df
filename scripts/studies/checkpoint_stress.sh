#!/usr/bin/env bash
# The checkpoint test (tests/test_checkpoint_safety.py: the folder at every save, SIGKILLs of real
# training at random moments then resume, resume never replacing a better model.pt) N times in a
# row, each with another kill seed, while two busy loops hold two cores. Prints one line per run
# and "passed K of N". Run from the repository root with the bundle's environment active:
#   bash scripts/studies/checkpoint_stress.sh 20
set -u
runs=${1:-20}
python -c "while True: pass" & b1=$!
python -c "while True: pass" & b2=$!
trap 'kill $b1 $b2 2>/dev/null' EXIT
passed=0
for i in $(seq 1 "$runs"); do
  start=$(date +%s)
  if BUNDLE_KILL_SEED=$i python -m pytest -q -p no:randomly tests/test_checkpoint_safety.py > /dev/null 2>&1; then
    passed=$((passed + 1)); result=ok
  else
    result=FAILED
  fi
  echo "run $i: $result, $(( $(date +%s) - start )) s"
done
echo "passed $passed of $runs"
