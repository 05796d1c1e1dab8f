"""Session vectors on real data: cluster them, and find the nearest sessions of one session.

Trains a GRU on the rsc15_100k click log (GRU4Rec's RSC15 setting, a few epochs; about half a minute
on 2 cores), embeds every test session with ``SessionRNN.transform`` (the last layer's state after the
session's items: the state that scores its next item), then

1. clusters the unit vectors with spherical k-means (NumPy) and prints each cluster's size and most
   frequent items, and
2. finds the 5 sessions most similar to one session with ``seqrec_fast.similar_sessions`` (exact
   cosine, one C++ top-k call) and prints the items they share with it.

    python examples/session_clusters.py                       # data from $SEQREC_DATA_DIR or ../shared/data
    python examples/session_clusters.py --model gru.npz       # reuse a trained model
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

import numpy as np
import seqrec_fast as sf

ROOT = Path(__file__).resolve().parents[1]


def kmeans(X: np.ndarray, k: int, seed: int = 0, iters: int = 30) -> np.ndarray:
    """Spherical k-means on unit rows (k-means++ start); returns the cluster of each row."""
    rng = np.random.default_rng(seed)
    centers = [X[rng.integers(len(X))]]
    for _ in range(1, k):  # k-means++: far rows are likelier next centres
        d = 1.0 - np.max(X @ np.array(centers).T, axis=1)
        p = np.maximum(d, 0) ** 2
        centers.append(X[rng.choice(len(X), p=p / p.sum())])
    C = np.array(centers)
    for _ in range(iters):
        label = np.argmax(X @ C.T, axis=1)
        for j in range(k):
            m = X[label == j].sum(axis=0)
            n = np.linalg.norm(m)
            if n > 0:
                C[j] = m / n
    return np.argmax(X @ C.T, axis=1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("SEQREC_DATA_DIR", ROOT.parent / "shared" / "data"))
    ap.add_argument("--model", default=None, help="a trained model file (default: train one)")
    ap.add_argument("--clusters", type=int, default=8)
    ap.add_argument("--session", type=int, default=None, help="test session id to query")
    a = ap.parse_args()
    d = Path(a.data_dir) / "rsc15_100k_sessionrec"
    train = sf.load_data(d / "rsc15_100k_train_full.tsv.gz")
    test = sf.load_data(d / "rsc15_100k_test.tsv.gz", item_map=train)
    if a.model:
        model = sf.load(a.model)
    else:
        from seqrec_fast.config import load_config

        params = load_config(ROOT / "configs" / "rsc15.toml")
        params.update(n_epochs=3, num_threads=2, seed=0, progress=False, verbose=False)
        model = sf.SessionRNN(**params).fit(train)
    vecs = model.transform(test)
    print(f"{len(vecs.ids):,} test sessions -> vectors of width {vecs.vectors.shape[1]}")

    # 1. clusters of sessions
    V = vecs.vectors / np.maximum(np.linalg.norm(vecs.vectors, axis=1, keepdims=True), 1e-12)
    label = kmeans(V.astype(np.float64), a.clusters)
    items_of = {sid: test.item_ids[test.items[test.offsets[s]: test.offsets[s + 1]]].tolist()
                for s, sid in enumerate(test.session_ids)}
    print(f"\n{a.clusters} clusters (spherical k-means on the unit vectors):")
    for j in np.argsort(-np.bincount(label, minlength=a.clusters)):
        members = vecs.ids[label == j]
        top = Counter(x for sid in members for x in set(items_of[sid])).most_common(4)
        print(f"  cluster {j}: {len(members):5,} sessions; most frequent items "
              + ", ".join(f"{item} ({n})" for item, n in top))

    # 2. the nearest sessions of one session, and what they share
    lengths = np.array([len(items_of[s]) for s in vecs.ids])
    row = (int(np.flatnonzero(vecs.ids == a.session)[0]) if a.session is not None
           else int(np.flatnonzero(lengths >= 4)[0]))
    query = vecs.ids[row]
    rows, cos = sf.similar_sessions(vecs, row, k=5)
    mine = items_of[query]
    print(f"\nsession {query}: items {mine}")
    print("its 5 nearest sessions by cosine of the vectors:")
    for r, c in zip(rows, cos):
        other = items_of[vecs.ids[r]]
        shared = sorted(set(other) & set(mine))
        print(f"  session {vecs.ids[r]} (cosine {c:.3f}, last item {other[-1]}): {len(other)} items, "
              f"shared with {query}: {shared if shared else 'none'}")
    nxt = model.recommend(mine, k=5)[0].tolist()
    print(f"the model's next items for session {query}: {nxt}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
