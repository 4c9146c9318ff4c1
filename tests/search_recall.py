#!/usr/bin/env python3
"""Recall@k of a LanceDB table's vector search, computed independently of
lanceferry: numpy brute force (float64) for the exact neighbours, Python
`lancedb` for the search. Used by tests/search.rs.

Reads one JSON object on stdin:
  {"uri", "table", "id_column", "vector_column", "space": "l2"|"cosine"|"ip",
   "metric": "l2"|"cosine"|"dot", "k", "nprobes": int|null,
   "refine_factor": int|null, "ids": [query ids]}
and prints {"mean", "worst_decile", "top1_self"} with lanceferry's
definitions: recall = |answers ∩ exact| / |exact|, both the k nearest other
than the query itself (each side is asked for k + 1), exact ties broken by id;
the worst decile is the mean of the lowest ceil(n/10) recalls; top-1 counts
queries whose first answer (by distance, LanceDB's order among equals) is
the query itself. Distances are Chroma's: l2 squared euclidean, cosine
1 - cos (1 for a zero vector), ip 1 - dot.
"""
import json
import math
import sys

import lancedb
import numpy as np


def main():
    p = json.load(sys.stdin)
    k = int(p["k"])
    t = lancedb.connect(p["uri"]).open_table(p["table"])
    data = t.to_arrow()
    ids = np.array(data.column(p["id_column"]).to_pylist())
    vec = data.column(p["vector_column"]).combine_chunks()
    dim = vec.type.list_size
    v32 = np.asarray(vec.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(ids), dim)
    v64 = v32.astype(np.float64)
    norms = np.sqrt((v64 * v64).sum(axis=1))
    row = {rid: n for n, rid in enumerate(ids.tolist())}

    def exact(q):
        if p["space"] == "l2":
            d = ((v64 - q) ** 2).sum(axis=1)
        elif p["space"] == "ip":
            d = 1.0 - v64 @ q
        else:
            qn = math.sqrt(float(q @ q))
            with np.errstate(divide="ignore", invalid="ignore"):
                d = np.where((norms == 0) | (qn == 0), 1.0, 1.0 - (v64 @ q) / (norms * qn))
        order = np.lexsort((ids, d))  # by distance, then id
        return ids[order[: k + 1]].tolist()

    recalls, self_first = [], 0
    for qid in p["ids"]:
        q32 = v32[row[qid]]
        truth = set([i for i in exact(q32.astype(np.float64)) if i != qid][:k])
        s = (
            t.search(q32, vector_column_name=p["vector_column"])
            .distance_type(p["metric"])
            .limit(k + 1)
            .select([p["id_column"]])
        )
        if p.get("nprobes") is not None:
            s = s.nprobes(int(p["nprobes"]))
        if p.get("refine_factor") is not None:
            s = s.refine_factor(int(p["refine_factor"]))
        res = s.to_arrow()
        got = res.column(p["id_column"]).to_pylist()
        dist = res.column("_distance").to_pylist()
        got = [g for _, g in sorted(zip(dist, got), key=lambda x: x[0])]  # stable
        others = [g for g in got if g != qid][:k]
        recalls.append(len(truth & set(others)) / len(truth) if truth else 1.0)
        if got and got[0] == qid:
            self_first += 1
    r = np.sort(np.array(recalls))
    tenth = max(1, -(-len(r) // 10))
    print(json.dumps({
        "mean": float(sum(recalls) / len(recalls)),
        "worst_decile": float(r[:tenth].sum() / tenth),
        "top1_self": self_first / len(recalls),
    }))


if __name__ == "__main__":
    main()
