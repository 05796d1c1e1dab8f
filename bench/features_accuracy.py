"""Accuracy with item features (issue 13): rsc15_64 with CatId, and a cold-start split.

    python bench/features_accuracy.py [--seeds 1 2 3] [--threads 2] [--cases rsc15_64 cold]
                                      [--quick] [--param n_epochs=5 ...]

rsc15_64 (rsc15_64_shehzad_jannach, train_full -> test): the official RSC15 setting
(configs/rsc15.toml) without features and with the item's CatId set as a multi-hot feature (an
item has 1-3 categories in the log; 31 values). Conservative full ranking, Recall@20 / MRR@20.

cold: the synthetic log (generate_sessions(n_sessions=30000, n_items=3000)), last day as test,
10% of the items held out of training (their events removed from the training sessions). The
feature table (generate_item_features) covers every item, so the held-out items enter the model
as cold-start items (W_y = 0, scored by F·P). Recall@20 / MRR@20 on the test events whose target
is a held-out item (an id-only model cannot score them: 0), and on all test events (unknown
targets count as misses), for: id only; topic; topic + popularity decile; topic + popularity
decile + the 8-d per-item code. Records go to bench/results/features_accuracy.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_records  # noqa: E402

from seqrec_fast.config import load_config  # noqa: E402
from seqrec_fast.data import load  # noqa: E402
from seqrec_fast.evaluate import evaluate  # noqa: E402
from seqrec_fast.model import SessionRNN  # noqa: E402
from seqrec_fast.synthetic import generate_item_features, generate_sessions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SEQREC_DATA_DIR", ROOT.parent / "shared" / "data"))


class TargetRanks:
    """Wraps a scorer for evaluate() and keeps every (target, conservative rank) it scores."""

    def __init__(self, model):
        self.model = model
        self.n_items = model.n_items
        self.targets, self.ranks = [], []

    def start(self, n):
        self.model.start(n)

    def reset(self, slots):
        self.model.reset(slots)

    def score_counts(self, slots, items, targets):
        gt, ge = self.model.score_counts(slots, items, targets)
        self.targets.append(np.asarray(targets))
        self.ranks.append(np.asarray(ge))
        return gt, ge

    def metrics(self, mask_items: np.ndarray, k: int = 20) -> tuple[float, float, int]:
        t = np.concatenate(self.targets)
        r = np.concatenate(self.ranks).astype(np.float64)
        sel = np.isin(t, mask_items)
        if not sel.any():
            return 0.0, 0.0, 0
        hit = r[sel] <= k
        return float(hit.mean()), float(np.where(hit, 1.0 / r[sel], 0).mean()), int(sel.sum())


def rsc15_64(a, params, records):
    d = DATA / "rsc15_64_shehzad_jannach"
    tr = d / "rsc15_64_train_full.tsv.gz"
    if not tr.exists():
        print(f"rsc15_64: {tr} not found, skipped")
        return
    train = load(tr)
    test = load(d / "rsc15_64_test.tsv.gz", item_map=train)
    raw = pd.read_csv(tr, sep="\t", usecols=["ItemId", "CatId"])
    cats = raw.groupby("ItemId")["CatId"].agg(lambda s: sorted({int(c) for c in s}))
    feats = pd.DataFrame({"ItemId": cats.index.to_numpy(), "CatId": list(cats.to_numpy())})
    print(f"rsc15_64: {train.n_events} train events, {train.n_items} items; CatId multi-hot over "
          f"{len(set().union(*feats.CatId))} values")
    for variant, extra in (("no features", {}), ("CatId", {"item_features": feats})):
        if variant not in a.rsc15_variants:
            continue
        rs, ms = [], []
        for seed in a.seeds:
            m = SessionRNN(**params, **extra, seed=seed, num_threads=a.threads, progress=False,
                           verbose=False)
            t0 = time.perf_counter()
            m.fit(train)
            fit_s = time.perf_counter() - t0
            res = evaluate(m, test, cutoffs=(20,))
            r, mrr = float(res["recall@20"]), float(res["mrr@20"])
            rs.append(r)
            ms.append(mrr)
            ev_s = float(np.mean([h["events_per_s"] for h in m.history_]))
            print(f"rsc15_64 {variant} seed {seed}: Recall@20 {r:.4f} MRR@20 {mrr:.4f} "
                  f"(fit {fit_s:.1f}s, {ev_s:,.0f} events/s)", flush=True)
            records.append({"case": "features_rsc15_64", "variant": variant, "seed": seed,
                            "recall@20": r, "mrr@20": mrr, "fit_s": fit_s, "events_per_s": ev_s,
                            "threads": a.threads, "params": params})
        print(f"rsc15_64 {variant}: mean Recall@20 {np.mean(rs):.4f} MRR@20 {np.mean(ms):.4f} "
              f"over {len(rs)} seeds")


def cold_split(n_sessions: int, n_items: int, seed: int, frac: float = 0.1):
    """(train, test, held-out ids, full feature table): last day as test, ``frac`` of the items
    held out of training."""
    data = generate_sessions(n_sessions=n_sessions, n_items=n_items, seed=seed)
    feats = generate_item_features(n_items=n_items, seed=seed)
    rng = np.random.default_rng(seed + 1000)
    held = np.sort(rng.choice(data.item_ids, size=round(frac * n_items), replace=False))
    first = data.times[data.offsets[:-1]]
    is_test = first >= first.max() - 86400.0
    frame = data.to_frame()
    sess_test = set(data.session_ids[is_test].tolist())
    in_test = frame.SessionId.isin(sess_test)
    tr = frame[~in_test & ~frame.ItemId.isin(held)]
    from seqrec_fast.data import SessionData

    train = SessionData.from_events(tr.SessionId.to_numpy(), tr.ItemId.to_numpy(), tr.Time.to_numpy())
    te = frame[in_test]
    return train, te, held, feats


def cold(a, params, records):
    n_sessions, n_items = (8000, 1000) if a.quick else (30000, 3000)
    variants = {
        "id only": None,
        "topic": ["topic"],
        "topic + pop decile": ["topic", "pop_bucket"],
        "topic + pop decile + code": ["topic", "pop_bucket", "code"],
    }
    results = {v: [] for v in variants}
    for seed in a.seeds:
        train, te, held, feats = cold_split(n_sessions, n_items, seed)
        for variant, cols in variants.items():
            extra = {} if cols is None else {"item_features": feats[["ItemId"] + cols]}
            m = SessionRNN(**params, **extra, seed=seed, num_threads=a.threads, progress=False,
                           verbose=False)
            m.fit(train)
            from seqrec_fast.data import SessionData

            test = SessionData.from_events(te.SessionId.to_numpy(), te.ItemId.to_numpy(),
                                           te.Time.to_numpy(), item_map=m.item_ids_,
                                           keep_unknown=True)
            wrapped = TargetRanks(m)
            res = evaluate(wrapped, test, cutoffs=(20,), unknown_targets="miss")
            is_held = np.isin(m.item_ids_, held)
            if cols is None:
                # an id-only model has no held-out item: every such target is a miss
                r_h, m_h, n_h = 0.0, 0.0, 0
            else:
                r_h, m_h, n_h = wrapped.metrics(np.flatnonzero(is_held))
            r_w, m_w, n_w = wrapped.metrics(np.flatnonzero(~is_held))
            r_all, m_all = float(res["recall@20"]), float(res["mrr@20"])
            results[variant].append((r_h, m_h, r_w, m_w, r_all, m_all))
            print(f"cold seed {seed} {variant}: held-out targets ({n_h}) Recall@20 {r_h:.4f} "
                  f"MRR@20 {m_h:.4f}; other targets ({n_w}) Recall@20 {r_w:.4f} MRR@20 {m_w:.4f}; "
                  f"all test events Recall@20 {r_all:.4f} MRR@20 {m_all:.4f}", flush=True)
            records.append({"case": "features_cold_start", "variant": variant, "seed": seed,
                            "heldout_recall@20": r_h, "heldout_mrr@20": m_h, "n_heldout": n_h,
                            "warm_recall@20": r_w, "warm_mrr@20": m_w, "n_warm": n_w,
                            "recall@20": r_all, "mrr@20": m_all, "n_sessions": n_sessions,
                            "n_items": n_items, "threads": a.threads, "params": params})
    print("\n| features | held-out targets R@20 | MRR@20 | other targets R@20 | MRR@20 "
          "| all events R@20 | MRR@20 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for v, rows in results.items():
        x = np.mean(rows, axis=0)
        print(f"| {v} | " + " | ".join(f"{u:.4f}" for u in x) + " |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", nargs="+", default=["rsc15_64", "cold"], choices=["rsc15_64", "cold"])
    p.add_argument("--config", default=str(ROOT / "configs" / "rsc15.toml"))
    p.add_argument("--quick", action="store_true", help="smaller synthetic log for the cold case")
    p.add_argument("--rsc15-variants", nargs="+", default=["no features", "CatId"],
                   choices=["no features", "CatId"], help="rsc15_64 variants to run")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of the config (e.g. n_epochs=5), for every case")
    a = p.parse_args(argv)
    params = load_config(a.config)
    params.pop("num_threads", None)
    params.pop("seed", None)
    for kv in a.param:
        k, _, v = kv.partition("=")
        params[k] = type(params[k])(v) if k in params and not isinstance(params[k], list) else v
    records = []
    print(f"setting: {a.config}: {params}")
    if "rsc15_64" in a.cases:
        rsc15_64(a, params, records)
    if "cold" in a.cases:
        cold(a, params, records)
    if records:
        print(f"records appended to {write_records('features_accuracy', records)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
