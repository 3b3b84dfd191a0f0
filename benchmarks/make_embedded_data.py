"""Build the embedded default benchmark (hf_conpet/benchmark_data/) from the Long Sequence data.

Why a subset: the installed package must run its default benchmark without ../shared, and the
135M default model on CPU learns a task in ~60 steps, so a few hundred short examples per task are
enough. Deterministic (fixed string seeds), so rerunning reproduces the committed files byte for byte:

    python benchmarks/make_embedded_data.py            # ../shared/data/long_sequence -> package
    python benchmarks/make_embedded_data.py --check    # fail if the committed files differ

Selection per task and split: drop inputs longer than MAX_INPUT_CHARS (keeps steps cheap and
evaluation fast), then draw the same number of examples per label where the source allows it
(so exact-match accuracy is not flattered by a majority label), then shuffle.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "long_sequence"
DEFAULT_OUT = REPO / "hf_conpet" / "benchmark_data"

TASKS = ("sst2", "agnews", "wic", "amazon")  # training order; keep equal to DEFAULT_TASKS
SIZES = {"train": 300, "test": 100}
MAX_INPUT_CHARS = 300
SEED = "hf-conpet-embedded-v1"


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def balanced_sample(rows: list[dict], labels: list[str], n: int, rng: random.Random) -> list[dict]:
    """n rows, as close to equal per label as the pool allows, in shuffled order."""
    pools = defaultdict(list)
    for row in rows:
        pools[row["output"]].append(row)
    for label in labels:
        rng.shuffle(pools[label])
    if sum(len(pools[label]) for label in labels) < n:
        raise SystemExit(f"only {len(rows)} rows after filtering, {n} wanted")
    picked: list[dict] = []
    quota = {label: 0 for label in labels}
    while len(picked) < n:  # round-robin over labels that still have rows
        for label in labels:
            if len(picked) == n:
                break
            if quota[label] < len(pools[label]):
                picked.append(pools[label][quota[label]])
                quota[label] += 1
    rng.shuffle(picked)
    return picked


def build_task(source: Path, task: str) -> dict[str, str]:
    """Write out/<task>/{train,test}.jsonl + meta.json; return {relative path: text}."""
    meta = json.loads((source / task / "meta.json").read_text(encoding="utf-8"))
    labels = list(meta["labels"])
    files: dict[str, str] = {}
    counts: dict[str, Counter] = {}
    for split, n in SIZES.items():
        rows = [r for r in read_jsonl(source / task / f"{split}.jsonl") if len(r["input"]) <= MAX_INPUT_CHARS]
        unknown = {r["output"] for r in rows} - set(labels)
        if unknown:
            raise SystemExit(f"{task}/{split}: outputs {sorted(unknown)} are not in meta labels")
        picked = balanced_sample(rows, labels, n, random.Random(f"{SEED}/{task}/{split}"))
        counts[split] = Counter(r["output"] for r in picked)
        files[f"{task}/{split}.jsonl"] = "".join(
            json.dumps({"id": r["id"], "input": r["input"], "output": r["output"]}, ensure_ascii=False) + "\n"
            for r in picked
        )
    meta["n_train"] = SIZES["train"]
    meta["n_test"] = SIZES["test"]
    meta["label_counts_test"] = {label: counts["test"][label] for label in labels}
    files[f"{task}/meta.json"] = json.dumps(meta, indent=1, ensure_ascii=False) + "\n"
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="long_sequence folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the task folders go")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        parser.error(f"source folder {args.source} does not exist (clone ../shared beside the repo or pass --source)")

    files: dict[str, str] = {}
    for task in args.tasks:
        files.update(build_task(args.source, task))
    if args.check:
        stale = [p for p, text in files.items() if not (args.out / p).is_file() or (args.out / p).read_text(encoding="utf-8") != text]
        for path in stale:
            print(f"differs: {args.out / path}", file=sys.stderr)
        return 1 if stale else 0
    for relative, text in files.items():
        target = args.out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    total = sum(len(text.encode("utf-8")) for text in files.values())
    print(f"wrote {len(args.tasks)} tasks ({', '.join(args.tasks)}) to {args.out}: {total / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
