#!/usr/bin/env python3
"""Write Chroma persistent directories with the real chromadb package, and the truth.

Usage: python chroma_fixtures.py OUT_DIR

Run with the python of a venv that has the chromadb version under test
(0.4.24, 0.5.23, 0.6.3 or 1.5.9). Writes OUT_DIR/chroma/ (the persistent
directory) and OUT_DIR/truth.json: for every collection, what
`collection.get(include=[...])` returns after all writes, plus its count,
dimension and space. Tests compare lanceferry's readers with that truth.

The collections cover what a reader can get wrong: unicode, records without
document or metadata, integers above 2**53, deletes, updates, upserts,
metadata-only updates, list metadata (1.5+), the three distance spaces,
writes that are only in the queue, flushed deletes with a resized index, and
an empty collection. Everything is seeded, so a version writes the same data
every time.

Besides the default tenant's default database, the directory holds database
`team_db` of tenant `team_tenant` (made with `chromadb.AdminClient`, which
0.4.24 to 1.5.9 all have) with one collection named `basic` like a default
one but holding other records, so a reader that mixes databases fails. Its
truth is under `other_database` (`tenant`, `database`, `collections`), apart
from the default database's `collections`.
"""
import json
import os
import random
import sys

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
import chromadb  # noqa: E402

VERSION = tuple(int(x) for x in chromadb.__version__.split(".")[:2])
BIG = 2**53 + 12345  # not representable as a float64
OTHER_TENANT = "team_tenant"
OTHER_DATABASE = "team_db"


def vec(rng, dim):
    return [rng.uniform(-1.0, 1.0) for _ in range(dim)]


def make(client, name, space, **extra_meta):
    meta = {"hnsw:space": space}
    meta.update(extra_meta)
    # No embedding function: a fixture must never compute (or download) one.
    return client.create_collection(name=name, metadata=meta, embedding_function=None)


def collections_truth(client):
    """What `get()` returns for every collection of the client's database."""
    out = {}
    for col in client.list_collections():
        col = client.get_collection(col if isinstance(col, str) else col.name, embedding_function=None)
        got = col.get(include=["embeddings", "documents", "metadatas", "uris"])
        embs = got.get("embeddings")
        embs = [] if embs is None else [[float(x) for x in e] for e in embs]
        meta = dict(col.metadata or {})
        out[col.name] = {
            "id": str(col.id),
            "count": col.count(),
            "space": meta.get("hnsw:space", "l2"),
            "dimension": len(embs[0]) if embs else None,
            "metadata": meta,
            "ids": got["ids"],
            "documents": got.get("documents"),
            "uris": got.get("uris"),
            "metadatas": got.get("metadatas"),
            "embeddings": embs,
        }
    return out


def main(out):
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "chroma")
    client = chromadb.PersistentClient(path=path)
    rng = random.Random(42)

    # basic: unicode, missing document/metadata, big ints, all scalar types.
    c = make(client, "basic", "l2", owner="ferry", level=3)
    ids, docs, metas, embs = [], [], [], []
    for i in range(300):
        ids.append(f"doc-{i:04d}")
        docs.append(None if i % 17 == 0 else f"Dokument {i} — ünïcödé ✓ 文档 {i}")
        if i % 13 == 0:
            metas.append(None)
        else:
            metas.append({
                "canvas_file": f"canvas/{i % 7}.canvas",
                "node_id": f"n{i}",
                "page": i,
                "score": i / 7.0,
                "flag": i % 2 == 0,
                "big": BIG + i,
                "label": "ℓabel-ü",
            })
        embs.append(vec(rng, 8))
    # chromadb rejects a None inside documents/metadatas lists on some
    # versions, so add records with and without them separately.
    for i in range(300):
        kwargs = {"ids": [ids[i]], "embeddings": [embs[i]]}
        if docs[i] is not None:
            kwargs["documents"] = [docs[i]]
        if metas[i] is not None:
            kwargs["metadatas"] = [metas[i]]
        if i % 50 == 0:
            kwargs["uris"] = [f"s3://bucket/{ids[i]}.png"]
        c.add(**kwargs)

    # mutated (cosine): updates, upserts, metadata-only updates, deletes.
    c = make(client, "mutated", "cosine")
    ids = [f"m{i}" for i in range(400)]
    c.add(ids=ids, embeddings=[vec(rng, 16) for _ in ids],
          documents=[f"original {i}" for i in range(400)],
          metadatas=[{"v": 1, "k": f"key{i}"} for i in range(400)])
    # Chroma re-embeds a document updated without an embedding, so pass one.
    c.update(ids=ids[:50], documents=[f"updated {i}" for i in range(50)],
             embeddings=[vec(rng, 16) for _ in range(50)])
    c.update(ids=ids[50:100], metadatas=[{"v": 2} for _ in range(50)])
    c.update(ids=ids[100:120], embeddings=[vec(rng, 16) for _ in range(20)])
    c.upsert(ids=ids[120:140] + [f"new{i}" for i in range(20)],
             embeddings=[vec(rng, 16) for _ in range(40)],
             documents=[f"upserted {i}" for i in range(40)],
             metadatas=[{"v": 3} for _ in range(40)])
    c.delete(ids=ids[200:260])

    # ip space, larger vectors.
    c = make(client, "inner", "ip")
    c.add(ids=[f"ip{i}" for i in range(120)], embeddings=[vec(rng, 32) for _ in range(120)],
          documents=[f"ip doc {i}" for i in range(120)])

    # queue_only: fewer writes than the sync threshold, so no vector reaches
    # the HNSW files; then a delete and an update, also only in the queue.
    c = make(client, "queue_only", "l2")
    c.add(ids=[f"q{i}" for i in range(60)], embeddings=[vec(rng, 8) for _ in range(60)],
          documents=[f"queued {i}" for i in range(60)], metadatas=[{"n": i} for i in range(60)])
    c.delete(ids=["q3", "q4"])
    c.update(ids=["q5"], documents=["queued five, updated"], embeddings=[vec(rng, 8)])

    # resized: beyond the initial HNSW capacity, with deletes flushed to disk.
    c = make(client, "resized", "l2")
    for start in range(0, 2600, 500):
        n = min(500, 2600 - start)
        c.add(ids=[f"r{i}" for i in range(start, start + n)],
              embeddings=[vec(rng, 8) for _ in range(n)],
              metadatas=[{"i": i} for i in range(start, start + n)])
    c.delete(ids=[f"r{i}" for i in range(0, 2600, 3)])
    c.add(ids=[f"r-late{i}" for i in range(1100)], embeddings=[vec(rng, 8) for _ in range(1100)])

    # wide: high-dimensional vectors (HNSW elements over 1 KB, whose slot
    # map is read label by label), flushed to disk, with deletes, updated
    # vectors and later adds.
    c = make(client, "wide", "cosine")
    for start in range(0, 1300, 325):
        c.add(ids=[f"w{i}" for i in range(start, start + 325)],
              embeddings=[vec(rng, 384) for _ in range(325)],
              documents=[f"wide {i}" for i in range(start, start + 325)])
    c.delete(ids=[f"w{i}" for i in range(0, 1300, 13)])
    c.update(ids=[f"w{i}" for i in range(1, 1300, 26)], embeddings=[vec(rng, 384) for _ in range(1, 1300, 26)])
    c.add(ids=[f"w-late{i}" for i in range(1100)], embeddings=[vec(rng, 384) for _ in range(1100)])

    if VERSION >= (1, 5):
        c = make(client, "lists", "cosine")
        c.add(ids=[f"l{i}" for i in range(40)], embeddings=[vec(rng, 8) for _ in range(40)],
              metadatas=[{"tags": [f"t{i}", "common"], "nums": [i, i + 1, BIG],
                          "ratios": [0.5, i / 3.0], "bits": [True, i % 2 == 0], "plain": i}
                         for i in range(40)])

    make(client, "empty", "l2")

    # Another tenant's database in the same directory. The admin client
    # shares the first client's settings (chromadb refuses a second client
    # of one directory with different ones).
    admin = chromadb.AdminClient(client.get_settings())
    admin.create_tenant(OTHER_TENANT)
    admin.create_database(OTHER_DATABASE, tenant=OTHER_TENANT)
    other = chromadb.PersistentClient(path=path, tenant=OTHER_TENANT, database=OTHER_DATABASE)
    c = make(other, "basic", "cosine", team="other")
    c.add(ids=[f"team-{i}" for i in range(50)], embeddings=[vec(rng, 4) for _ in range(50)],
          documents=[f"team doc {i}" for i in range(50)],
          metadatas=[{"n": i, "even": i % 2 == 0} for i in range(50)])
    c.delete(ids=["team-7"])
    c.update(ids=["team-8"], metadatas=[{"n": 800}])

    truth = {
        "chromadb": chromadb.__version__,
        "collections": collections_truth(client),
        "other_database": {
            "tenant": OTHER_TENANT,
            "database": OTHER_DATABASE,
            "collections": collections_truth(other),
        },
    }
    with open(os.path.join(out, "truth.json"), "w") as f:
        json.dump(truth, f, ensure_ascii=False, sort_keys=True)
    print(f"wrote {path} with chromadb {chromadb.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1])
