"""Write a MONAI datalist JSON for the NIfTI volumes of a folder, split by subject.

Each file is one subject. Examples:

    # every volume of a folder as a test set (e.g. to evaluate a trained model on another source)
    python scripts/make_datalist.py /data/other_site --test-only -o /tmp/other_site.json
    # a 70/15/15 split by subject, reproducible
    python scripts/make_datalist.py /data/my_t1 --val 0.15 --test 0.15 --seed 0 -o /data/my_t1/datalist.json

Paths are written relative to the folder, so pass it as `--dataset_dir` to the bundle.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bundle.data.io import is_nifti, write_text_atomic  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("-o", "--output", required=True, help="datalist JSON to write")
    parser.add_argument("--val", type=float, default=0.15, help="fraction of subjects for validation")
    parser.add_argument("--test", type=float, default=0.15, help="fraction of subjects for test")
    parser.add_argument("--test-only", action="store_true", help="put every volume in the test list")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if not os.path.isdir(args.folder):
        print(f"error: {args.folder}: no such directory", file=sys.stderr)
        return 1
    files = sorted(f for f in os.listdir(args.folder) if is_nifti(f))
    if not files:
        print(f"error: {args.folder}: no NIfTI volumes (.nii, .nii.gz)", file=sys.stderr)
        return 1
    if args.test_only:
        split = {"test": files}
    else:
        random.Random(args.seed).shuffle(files)
        n_test, n_val = round(len(files) * args.test), round(len(files) * args.val)
        split = {"test": files[:n_test], "validation": files[n_test : n_test + n_val],
                 "training": files[n_test + n_val :]}
    content = {k: [{"image": f} for f in sorted(v)] for k, v in split.items()}
    write_text_atomic(args.output, json.dumps(content, indent=2) + "\n")
    print(f"{args.output}: " + ", ".join(f"{k} {len(v)}" for k, v in content.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
