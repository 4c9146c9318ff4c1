#!/usr/bin/env python3
"""Write demo/chroma_db: the small Chroma directory `plans/demo.yaml` migrates.

Run with chromadb 1.5.9 (the venv made by scripts/setup-python.sh):
    ~/.cache/lanceferry-venvs/chroma-1.5.9/bin/python scripts/make_demo.py demo/chroma_db

Two collections shaped like the original tool's (`canvas_explanations`,
`canvas_concepts`): a document, `canvas_file` and `node_id` metadata plus a
few more keys, and 64-dimensional embeddings (small, so the directory can
live in git; the real ones are 1536). Seeded: the same bytes of data every
time. Vectors are clustered so a nearest-neighbour search has a clear answer.
"""
import os
import random
import sys

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
import chromadb  # noqa: E402

DIM = 64


def main(out):
    if os.path.exists(out):
        sys.exit(f"{out} exists; remove it first")
    client = chromadb.PersistentClient(path=out)
    rng = random.Random(7)
    centers = [[rng.gauss(0, 1) for _ in range(DIM)] for _ in range(12)]
    for name, n, space in (("canvas_explanations", 600, "cosine"), ("canvas_concepts", 400, "cosine")):
        col = client.create_collection(name=name, metadata={"hnsw:space": space}, embedding_function=None)
        ids, docs, metas, embs = [], [], [], []
        for i in range(n):
            c = centers[i % len(centers)]
            ids.append(f"{name[7:11]}-{i:05d}")
            docs.append(f"{name.split('_')[1][:-1].capitalize()} {i}: how node {i % 50} relates to the canvas {i % 9}.")
            metas.append({
                "canvas_file": f"notes/canvas-{i % 9}.canvas",
                "node_id": f"node-{i % 50:03d}",
                "depth": i % 4,
                "score": round(rng.random(), 6),
                "reviewed": i % 3 == 0,
            })
            embs.append([x + rng.gauss(0, 0.05) for x in c])
        for s in range(0, n, 200):
            col.add(ids=ids[s:s + 200], documents=docs[s:s + 200], metadatas=metas[s:s + 200], embeddings=embs[s:s + 200])
    print(f"wrote {out} with chromadb {chromadb.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
