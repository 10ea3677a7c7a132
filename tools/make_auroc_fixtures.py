#!/usr/bin/env python3
"""Writes tests/fixtures/auroc.json: AUROC and F1 cases computed by
scikit-learn (roc_auc_score; f1_score at a 0.5 threshold with
zero_division=0), for tests/probe.rs to compare `nemesis::probe::metrics`
against. Cases include heavy ties and an absent class (AUROC undefined).

    python tools/make_auroc_fixtures.py   # needs numpy and scikit-learn
"""

import json
import os

import numpy as np
from sklearn.metrics import f1_score, roc_auc_score


def case(name, scores, labels):
    scores = [float(s) for s in scores]
    labels = [int(v) for v in labels]
    if len(set(labels)) < 2:
        auc = None  # one class only: undefined (scikit-learn warns, or raises in older versions)
    else:
        auc = float(roc_auc_score(labels, scores))
    pred = [int(s >= 0.5) for s in scores]
    f1 = float(f1_score(labels, pred, zero_division=0))
    return {"name": name, "scores": scores, "labels": labels, "auroc": auc, "f1": f1}


def main():
    rng = np.random.default_rng(7)
    cases = []
    for n in (5, 40, 300):
        labels = (rng.random(n) < 0.3).astype(int)
        labels[0], labels[-1] = 0, 1
        scores = np.clip(labels * 0.25 + rng.random(n) * 0.8, 0, 1)
        cases.append(case(f"random n={n}", scores, labels))
        # Scores rounded to one decimal: many ties, across classes too.
        cases.append(case(f"ties n={n}", np.round(scores, 1), labels))
    cases.append(case("all tied", [0.5] * 6, [0, 1, 0, 1, 1, 0]))
    cases.append(case("perfect", [0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]))
    cases.append(case("inverted", [0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]))
    cases.append(case("absent class", [0.1, 0.7, 0.4], [0, 0, 0]))
    cases.append(case("only positives", [0.1, 0.7, 0.4], [1, 1, 1]))
    cases.append(case("nothing predicted", [0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1]))
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "auroc.json")
    with open(out, "w") as f:
        json.dump({"sklearn": __import__("sklearn").__version__, "cases": cases}, f, indent=1)
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main()
