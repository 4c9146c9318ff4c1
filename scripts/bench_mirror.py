#!/usr/bin/env python3
"""What `lanceferry mirror` costs a Chroma client: latency and throughput of
single-record adds, directly against Chroma and through the mirror.

Usage:
  python scripts/bench_mirror.py setup UPSTREAM_URL [--collection NAME] [--dim 1536]
  python scripts/bench_mirror.py run UPSTREAM_URL PROXY_URL [--collection NAME]
        [--dim 1536] [--n 500] [--clients 4] [--requests 2000] [--warmup 20]

`setup` creates the collection (with a few records, so `lanceferry apply`
can create its table); then apply a plan that mirrors it and start
`lanceferry mirror` (docs/mirror.md, "Benchmark"). `run` measures:

1. latency: N sequential adds of one DIM-dimensional record, directly and
   through the mirror (alternating, so both see the same server state),
   p50 / p99 / mean, and what the mirror adds;
2. throughput: CLIENTS processes, each with its own HttpClient, adding
   REQUESTS records in all (one per request), directly and through the
   mirror: requests per second;
3. the mirror's statistics afterwards, and how long its journal took to
   drain (every write reaching LanceDB).

Run it with the python of a venv that has chromadb (e.g.
~/.cache/lanceferry-venvs/chroma-1.5.9/bin/python). Ids are unique per run,
so it can be repeated against the same collection.
"""
import argparse
import json
import multiprocessing
import os
import statistics
import sys
import time
import urllib.request
import uuid
from urllib.parse import urlparse

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
import chromadb  # noqa: E402
import numpy as np  # noqa: E402


def collection(url, name):
    u = urlparse(url)
    client = chromadb.HttpClient(host=u.hostname, port=u.port)
    return client.get_collection(name, embedding_function=None)


def vectors(n, dim, seed):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype("float32")


def setup(args):
    u = urlparse(args.upstream)
    client = chromadb.HttpClient(host=u.hostname, port=u.port)
    col = client.get_or_create_collection(args.collection, embedding_function=None)
    if col.count() == 0:
        col.add(ids=[f"seed-{i}" for i in range(10)], embeddings=vectors(10, args.dim, 0),
                documents=[f"seed {i}" for i in range(10)], metadatas=[{"seed": i} for i in range(10)])
    print(f"collection `{args.collection}` ready on {args.upstream} ({col.count()} records)")


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100.0 * (len(sorted_values) - 1))))
    return sorted_values[k]


def latency(args, run_id):
    direct = collection(args.upstream, args.collection)
    proxied = collection(args.proxy, args.collection)
    vecs = vectors(args.n + args.warmup, args.dim, 1)
    times = {"direct": [], "mirror": []}
    for i in range(args.n + args.warmup):
        for name, col in (("direct", direct), ("mirror", proxied)):
            rid = f"lat-{run_id}-{name}-{i}"
            t0 = time.perf_counter()
            col.add(ids=[rid], embeddings=[vecs[i]], documents=[f"bench {i}"], metadatas=[{"i": i}])
            dt = (time.perf_counter() - t0) * 1000.0
            if i >= args.warmup:
                times[name].append(dt)
    return {k: sorted(v) for k, v in times.items()}


def _worker(job):
    url, name, run_id, k, count, dim = job
    col = collection(url, name)
    vecs = vectors(count, dim, 100 + k)
    t0 = time.perf_counter()
    for i in range(count):
        col.add(ids=[f"thr-{run_id}-{k}-{i}"], embeddings=[vecs[i]], metadatas=[{"k": k, "i": i}])
    return time.perf_counter() - t0


def throughput(args, url, run_id):
    per = args.requests // args.clients
    jobs = [(url, args.collection, run_id, k, per, args.dim) for k in range(args.clients)]
    with multiprocessing.Pool(args.clients) as pool:
        t0 = time.perf_counter()
        pool.map(_worker, jobs)
        wall = time.perf_counter() - t0
    return per * args.clients / wall


def stats(proxy):
    with urllib.request.urlopen(proxy.rstrip("/") + "/lanceferry/stats", timeout=5) as r:
        return json.load(r)


def run(args):
    run_id = uuid.uuid4().hex[:8]
    print(f"{args.n} sequential single-record adds of {args.dim}-d vectors each way "
          f"(after {args.warmup} warm-up), then {args.requests} adds from {args.clients} clients")
    lat = latency(args, run_id)
    d, m = lat["direct"], lat["mirror"]
    rows = [
        ("p50 latency (ms)", percentile(d, 50), percentile(m, 50)),
        ("p99 latency (ms)", percentile(d, 99), percentile(m, 99)),
        ("mean latency (ms)", statistics.fmean(d), statistics.fmean(m)),
    ]
    thr_direct = throughput(args, args.upstream, run_id + "d")
    thr_mirror = throughput(args, args.proxy, run_id + "m")
    rows.append((f"throughput, {args.clients} clients (req/s)", thr_direct, thr_mirror))

    print()
    print(f"{'':36} {'direct':>10} {'mirror':>10} {'added':>10}")
    for label, a, b in rows:
        print(f"{label:36} {a:10.2f} {b:10.2f} {b - a:+10.2f}")

    t0 = time.perf_counter()
    s = stats(args.proxy)
    while s["pending"] > 0 and time.perf_counter() - t0 < 300:
        time.sleep(0.2)
        s = stats(args.proxy)
    drained = time.perf_counter() - t0
    print()
    print(f"mirror: {s['writes']} writes, {s['journaled']} journaled, {s['both_ok']} in LanceDB, "
          f"{s['dropped']} dropped, {s['failed']} failed attempts; "
          f"journal drained {drained:.1f} s after the last write (pending {s['pending']})")
    if s["pending"] > 0 or s["dropped"] > 0:
        sys.exit("the mirror did not catch up: see `lanceferry mirror status`")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("upstream")
    r = sub.add_parser("run")
    r.add_argument("upstream")
    r.add_argument("proxy")
    for a in (s, r):
        a.add_argument("--collection", default="bench_mirror")
        a.add_argument("--dim", type=int, default=1536)
    r.add_argument("--n", type=int, default=500)
    r.add_argument("--warmup", type=int, default=20)
    r.add_argument("--clients", type=int, default=4)
    r.add_argument("--requests", type=int, default=2000)
    args = p.parse_args()
    if args.cmd == "setup":
        setup(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
