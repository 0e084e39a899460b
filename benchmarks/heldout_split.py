"""A held-out sample of RewardBench for checking what was chosen on the mini development split (#22).

The mini set (the packaged 230 rows) is where options are tuned; this writes the full set's rows that are NOT in
mini, so that `cdr eval FILE --sample N --seed S` draws rows no choice has seen:

    python benchmarks/heldout_split.py ../shared/data/reward_bench/filtered.jsonl -o heldout.jsonl
    cdr eval heldout.jsonl --sample 300 --seed 1 -o ev-heldout-vanilla
"""

from __future__ import annotations

import argparse
import hashlib
import json

from cdr.pipelines.evaluate import mini_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("full", help="the full RewardBench rows (JSONL with subset and id)")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    with open(mini_path(), encoding="utf-8") as f:
        mini = {(row["subset"], str(row["id"])) for row in map(json.loads, f)}
    kept = dropped = 0
    digest = hashlib.sha256()
    with open(args.full, encoding="utf-8") as src, open(args.output, "w", encoding="utf-8") as out:
        for line in src:
            row = json.loads(line)
            if (row["subset"], str(row["id"])) in mini:
                dropped += 1
                continue
            out.write(line)
            digest.update(line.encode("utf-8"))
            kept += 1
    print(f"{kept} rows written to {args.output} ({dropped} mini rows left out); sha256 {digest.hexdigest()}")


if __name__ == "__main__":
    main()
