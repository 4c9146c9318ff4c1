#!/usr/bin/env python3
"""Write a large Chroma collection with the original tool's metadata shape.

Usage: python make_large.py OUT_DIR COUNT DIM [COLLECTION]

Uses the real chromadb (run it with the chroma-1.5.9 venv). Records carry a
document, `canvas_file`, `node_id` and a few scalar keys; vectors are seeded
Gaussian noise. Used by the crash test (50,000 records) and the benchmarks
(100,000 x 1536).
"""
import os
import sys

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
import numpy as np  # noqa: E402
import chromadb  # noqa: E402


def main(out, count, dim, name):
    client = chromadb.PersistentClient(path=out)
    col = client.create_collection(name=name, metadata={"hnsw:space": "cosine"}, embedding_function=None)
    rng = np.random.default_rng(1234)
    step = 5000
    for s in range(0, count, step):
        n = min(step, count - s)
        ids = [f"rec-{i:08d}" for i in range(s, s + n)]
        docs = [f"Explanation {i}: node {i % 997} of canvas {i % 113}." for i in range(s, s + n)]
        metas = [{"canvas_file": f"canvas/{i % 113}.canvas", "node_id": f"node-{i % 997}",
                  "page": i % 50, "weight": float(i % 7) / 7.0, "flag": i % 2 == 0} for i in range(s, s + n)]
        col.add(ids=ids, documents=docs, metadatas=metas,
                embeddings=rng.standard_normal((n, dim), dtype=np.float32))
    print(f"wrote {count} x {dim} into {out}/{name}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "canvas_explanations")
