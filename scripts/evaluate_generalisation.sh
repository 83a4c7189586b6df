#!/usr/bin/env bash
# Evaluate the shipped model on brain MRI from other sources than its training data (other
# scanners, 1 mm resolution, with and without skull): the T1 volumes in ../shared/data/mri/single/
# (a development-machine folder; pass another folder of NIfTI volumes as $1 elsewhere).
# Writes eval/generalisation/{metrics.json,metrics.md,per_case.csv}.
set -euo pipefail
cd "$(dirname "$0")/.."
src="${1:-../shared/data/mri/single}"
out="${2:-eval/generalisation}"
if [ ! -d "$src" ]; then echo "error: $src: no such directory" >&2; exit 1; fi
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# real-valued NIfTI T1 volumes only (the complex EPI is not a magnitude image)
for f in "$src"/*.nii.gz; do
  case "$(basename "$f")" in *complex*) continue ;; esac
  ln -s "$(realpath "$f")" "$work/$(basename "$f")"
done
python scripts/make_datalist.py "$work" --test-only -o "$work/datalist.json"
python -m monai.bundle run evaluating --meta_file configs/metadata.json \
  --config_file "['configs/train.yaml','configs/evaluate.yaml']" --logging_file configs/logging.conf \
  --dataset_dir "$work" --datalist "$work/datalist.json" --output_dir "$out" "${@:3}"
