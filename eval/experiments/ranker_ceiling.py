"""How much a non-linear ranker could add over the linear one, on the served lists.

The lists are exactly what the served ranker sees (the candidates of the endpoint's pool,
the features it computes), exported by

    cargo run --release -p recstream-model --example export_lists -- yoochoose target/lists
    python eval/experiments/ranker_ceiling.py target/lists/yoochoose

(needs numpy, scikit-learn, lightgbm). Fits, on the training lists, a logistic regression
(the linear ranker's model class) and LightGBM LambdaMART / binary GBDTs, and reports the
NDCG@20 of the positive on the test lists: every list (`any`) and, for `discovery`, the
lists whose positive is new to the user with the known candidates removed (feature 8 is
`seen`). The lists hold covered positives only, so the numbers are conditional on the pool
and are compared with each other, not with EVAL.md's tables.
"""

import sys

import lightgbm as lgb
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

SEEN = 8


def load(prefix, part):
    a = np.loadtxt(f"{prefix}-{part}.csv", delimiter=",")
    return a[:, 0].astype(int), a[:, 1], a[:, 2:]


def sizes(g):
    _, counts = np.unique(g, return_counts=True)
    return counts


def ndcg20(g, y, s):
    out = []
    for k in np.unique(g):
        m = g == k
        rank = (s[m] > s[m][y[m] == 1][0]).sum()
        out.append(1 / np.log2(rank + 2) if rank < 20 else 0.0)
    return float(np.mean(out))


def discovery(g, y, x):
    new = x[:, SEEN] == 0
    lists = np.unique(g[(y == 1) & new])
    m = new & np.isin(g, lists)
    return g[m], y[m], x[m]


def main(prefix):
    gtr, ytr, xtr = load(prefix, "train")
    gte, yte, xte = load(prefix, "test")
    gd, yd, xd = discovery(gte, yte, xte)
    print(f"{len(np.unique(gtr))} training lists, {len(np.unique(gte))} test lists "
          f"({len(np.unique(gd))} discovery)")
    sc = StandardScaler().fit(xtr)
    lr = LogisticRegression(C=1.0, max_iter=500).fit(sc.transform(xtr), ytr)
    rows = [("logistic regression (linear)",
             lr.decision_function(sc.transform(xte)), lr.decision_function(sc.transform(xd)))]
    for objective, leaves, rounds in [("lambdarank", 15, 200), ("lambdarank", 31, 400),
                                      ("binary", 15, 200)]:
        params = dict(objective=objective, learning_rate=0.05, num_leaves=leaves,
                      min_data_in_leaf=50, feature_fraction=0.8, bagging_fraction=0.8,
                      bagging_freq=1, seed=1, verbose=-1)
        if objective == "lambdarank":
            params["lambdarank_truncation_level"] = 20
        data = lgb.Dataset(xtr, ytr, group=sizes(gtr) if objective == "lambdarank" else None)
        m = lgb.train(params, data, num_boost_round=rounds)
        rows.append((f"GBDT {objective}, {leaves} leaves, {rounds} rounds",
                     m.predict(xte), m.predict(xd)))
    base_any, base_disc = ndcg20(gte, yte, rows[0][1]), ndcg20(gd, yd, rows[0][2])
    print("| ranker | NDCG@20 any | vs linear | NDCG@20 discovery | vs linear |")
    print("|---|---:|---:|---:|---:|")
    for name, s_any, s_disc in rows:
        a, d = ndcg20(gte, yte, s_any), ndcg20(gd, yd, s_disc)
        print(f"| {name} | {a:.4f} | {a / base_any:.3f}× | {d:.4f} | {d / base_disc:.3f}× |")


if __name__ == "__main__":
    main(sys.argv[1])
