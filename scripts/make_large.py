#!/usr/bin/env python3
"""Write a large Chroma collection with the original tool's metadata shape.

Usage: python make_large.py OUT_DIR COUNT DIM [COLLECTION] [gaussian|clustered]

Uses the real chromadb (run it with the chroma-1.5.9 venv). Records carry a
document, `canvas_file`, `node_id` and a few scalar keys. Vectors are seeded:
- `gaussian` (the default): i.i.d. Gaussian noise, the hardest case for an
  IVF index (no structure to partition);
- `clustered`: closer to real text embeddings: 1,000 clusters of uneven size
  (probability ~ 1/rank^0.8) around a shared mean direction, each record its
  cluster's centre plus noise, normalised to unit length (cosine between
  records of one cluster ~0.8, of different clusters ~0.4).
Used by the crash test (50,000 records) and the benchmarks (100,000 x 1536,
1,000,000 x 128, and the clustered set of scripts/bench_index.sh).
"""
import os
import sys

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
import numpy as np  # noqa: E402
import chromadb  # noqa: E402


def vectors(rng, n, dim, kind, model):
    if kind == "gaussian":
        return rng.standard_normal((n, dim), dtype=np.float32)
    mean, centres, p = model
    which = rng.choice(len(centres), size=n, p=p)
    x = 0.8 * mean + centres[which] + 0.6 * rng.standard_normal((n, dim), dtype=np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def main(out, count, dim, name, kind="gaussian"):
    if kind not in ("gaussian", "clustered"):
        sys.exit(f"unknown vector kind {kind!r}: gaussian or clustered")
    client = chromadb.PersistentClient(path=out)
    col = client.create_collection(name=name, metadata={"hnsw:space": "cosine"}, embedding_function=None)
    rng = np.random.default_rng(1234)
    model = None
    if kind == "clustered":
        crng = np.random.default_rng(99)
        p = 1.0 / np.arange(1, 1001) ** 0.8
        model = (crng.standard_normal(dim, dtype=np.float32),
                 crng.standard_normal((1000, dim), dtype=np.float32), p / p.sum())
    step = 5000
    for s in range(0, count, step):
        n = min(step, count - s)
        ids = [f"rec-{i:08d}" for i in range(s, s + n)]
        docs = [f"Explanation {i}: node {i % 997} of canvas {i % 113}." for i in range(s, s + n)]
        metas = [{"canvas_file": f"canvas/{i % 113}.canvas", "node_id": f"node-{i % 997}",
                  "page": i % 50, "weight": float(i % 7) / 7.0, "flag": i % 2 == 0} for i in range(s, s + n)]
        col.add(ids=ids, documents=docs, metadatas=metas,
                embeddings=vectors(rng, n, dim, kind, model))
    print(f"wrote {count} x {dim} ({kind}) into {out}/{name}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
         sys.argv[4] if len(sys.argv) > 4 else "canvas_explanations",
         sys.argv[5] if len(sys.argv) > 5 else "gaussian")
