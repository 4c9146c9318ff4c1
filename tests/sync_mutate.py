"""Change a Chroma collection the way an application does during the weeks
before a cut-over, with the real chromadb, and print what changed.

Usage: python sync_mutate.py CHROMA_DIR COLLECTION

On a collection of at least 2,000 records (`rec-00000000`...), in this order:
add 1,000 new records; update the documents of 100; the metadata only of
50; the vectors only of 30; upsert 20 existing ids with identical values
(not a change); delete 200 by id and 50 by a `where` filter. Prints one
JSON line: {"insert": 1000, "update": 180, "delete": 250}.
"""
import json
import os
import sys

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
import numpy as np  # noqa: E402
import chromadb  # noqa: E402

path, name = sys.argv[1:3]
col = chromadb.PersistentClient(path=path).get_collection(name, embedding_function=None)
rid = lambda i: f"rec-{i:08d}"  # noqa: E731
n = col.count()
dim = len(col.get(ids=[rid(0)], include=["embeddings"])["embeddings"][0])
rng = np.random.default_rng(99)

new = [f"new-{i:05d}" for i in range(1000)]
col.add(ids=new, documents=[f"new document {i}" for i in range(1000)],
        metadatas=[{"canvas_file": "canvas/new.canvas", "node_id": f"new-{i}"} for i in range(1000)],
        embeddings=rng.standard_normal((1000, dim), dtype=np.float32))
docs = [rid(i) for i in range(0, 100)]
# With the vectors they have: without an embedding function, chromadb would
# otherwise try to embed the new documents.
kept = col.get(ids=docs, include=["embeddings"])
col.update(ids=kept["ids"], documents=[f"edited document {i}" for i in range(100)],
           embeddings=kept["embeddings"])
metas = [rid(i) for i in range(100, 150)]
col.update(ids=metas, metadatas=[{"canvas_file": "canvas/moved.canvas", "node_id": f"moved-{i}"} for i in range(50)])
vecs = [rid(i) for i in range(150, 180)]
col.update(ids=vecs, embeddings=rng.standard_normal((30, dim), dtype=np.float32))
same = col.get(ids=[rid(i) for i in range(180, 200)], include=["embeddings", "documents", "metadatas"])
col.upsert(ids=same["ids"], documents=same["documents"], metadatas=same["metadatas"],
           embeddings=same["embeddings"])
col.delete(ids=[rid(i) for i in range(n - 200, n)])
# 50 more by a filter: give them a marker first, then delete where it is set.
marked = [rid(i) for i in range(1000, 1050)]
col.update(ids=marked, metadatas=[{"canvas_file": "canvas/gone.canvas", "node_id": "gone"} for _ in marked])
col.delete(where={"node_id": "gone"})
print(json.dumps({"insert": 1000, "update": 180, "delete": 250, "count": col.count()}))
