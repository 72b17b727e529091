"""Search across 100,000 stored answers: the full-text index (FTS5) against a LIKE scan, in one run.

Target: a search returns in under 50 ms (median over queries). Both are run through the store on the
same project, alternating, for the same words.

    python bench/bench_search.py [--answers 100000]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

def vocabulary(rng: random.Random, n: int = 20_000) -> list[str]:
    """Pseudo-words with a Zipf-like frequency, as in real text: a few very common, most rare."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--answers", type=int, default=100_000)
    args = parser.parse_args()
    from emgui.core.search import answers_like, search_answers
    from emgui.core.store import Project

    project = Project.create(Path(tempfile.mkdtemp(prefix="emgui-search-")) / "p")
    rng = random.Random(0)
    words = vocabulary(rng)
    weights = [1 / (rank + 1) for rank in range(len(words))]
    job = project.create_job("sample", {})
    t0 = time.perf_counter()
    for start in range(0, args.answers, 5000):
        project.insert_many("samples", [
            {"job_id": job, "question_id": f"q{i % 50}", "prompt": "A question?",
             "answer": " ".join(rng.choices(words, weights, k=60)) + f" token{i}", "created_at": 0.0}
            for i in range(start, min(args.answers, start + 5000))
        ])  # fmt: skip
    print(f"stored {args.answers:,} answers (indexed as they were inserted) in {time.perf_counter() - t0:.1f} s")
    queries = ["token77777", words[50], words[400], f"{words[20]} {words[300]}", words[5000], "token123"]
    fts, like = [], []
    for _ in range(5):
        for q in queries:
            t = time.perf_counter()
            hits = search_answers(project, q)
            fts.append(time.perf_counter() - t)
            t = time.perf_counter()
            answers_like(project, q)
            like.append(time.perf_counter() - t)
            assert hits
    print(f"FTS5 search: median {statistics.median(fts) * 1000:.1f} ms, worst {max(fts) * 1000:.1f} ms (target < 50)")
    print(f"LIKE scan:   median {statistics.median(like) * 1000:.1f} ms, worst {max(like) * 1000:.1f} ms")
    print(f"ratio LIKE / FTS (median): {statistics.median(like) / statistics.median(fts):.0f}x")


if __name__ == "__main__":
    main()
