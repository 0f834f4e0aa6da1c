"""Which proxy score predicts the quantized accuracy best? Alternatives to the BNS distance.

Reads the per-candidate W4A4 accuracies measured by ``proxy_study.py`` and computes, on the same
1,024 images per candidate, several scores from one pass through the model:

* ``bns``: the default normalised BNS distance (:func:`zerop_deploy.proxy.stats.bns_distance`);
* ``plain``: ZeroQ's plain sum of L2 norms;
* ``kl``: the mean over layers and channels of KL(observed Gaussian || stored Gaussian);
* ``bns_mean`` / ``bns_std``: only the mean, or only the std term of ``bns``;
* ``bns_deep``: ``bns`` over the deeper half of the BN layers only;
* ``output``: the no-BN fallback (confidence + evenness of the predictions).

Spearman's rho of each against accuracy, per network (13-15 candidates: read small differences
with care). Results go to ``benchmarks/results/proxy_scores.json``.

    python benchmarks/proxy_scores.py
"""

from __future__ import annotations

import json
import math

import numpy as np
from _common import ROOT, SHARED
from proxy_study import NETS, UPPER, _candidates

from zerop_deploy.data.preprocess import normalize
from zerop_deploy.data.sources import load_pool, open_source
from zerop_deploy.load.to_torch import load_model
from zerop_deploy.proxy.stats import (
    bns_distance,
    floored_std,
    observe_bns,
    output_score,
    spearman,
    stored_bns,
)


def _terms(observed, stored):
    ref = {bn.node: bn for bn in stored}
    rows = []
    for obs in observed:
        st = ref[obs.node]
        s = floored_std(st)
        dm = math.sqrt(float(np.mean(((obs.mean - st.mean) / s) ** 2)))
        ds = math.sqrt(float(np.mean(((obs.std - st.std) / s) ** 2)))
        sig = np.maximum(obs.std, 1e-8)
        kl = np.log(s / sig) + (sig**2 + (obs.mean - st.mean) ** 2) / (2 * s**2) - 0.5
        rows.append((dm, ds, float(np.mean(kl))))
    return rows


def scores(model, proto, x) -> dict[str, float]:
    batches = [normalize(x[i : i + 256]) for i in range(0, len(x), 256)]
    observed = observe_bns(model, proto, batches)
    stored = stored_bns(proto)
    order = {bn.node: i for i, bn in enumerate(stored)}
    observed.sort(key=lambda o: order[o.node])
    terms = _terms(observed, stored)
    deep = terms[len(terms) // 2 :]
    import torch

    with torch.no_grad():
        logits = torch.cat([model(b) for b in batches]).numpy()
    return {
        "bns": bns_distance(observed, stored),
        "plain": bns_distance(observed, stored, normalised=False),
        "kl": float(np.mean([t[2] for t in terms])),
        "bns_mean": float(np.mean([t[0] for t in terms])),
        "bns_std": float(np.mean([t[1] for t in terms])),
        "bns_deep": float(np.mean([t[0] + t[1] for t in deep])),
        "output": output_score(logits)["distance"],
    }


def main() -> None:
    import tempfile
    from pathlib import Path

    study = json.loads((ROOT / "benchmarks" / "results" / "proxy_study.json").read_text())
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        cands = _candidates(SHARED / "data", Path(tmp))
        for net, stem in NETS.items():
            runs = {
                r["candidate"]: r["accuracy"]
                for r in study["runs"]
                if r["net"] == net and r["proxy_images_arg"] is None
                and r["candidate"] != UPPER.removesuffix(".npz")
            }  # fmt: skip
            if len(runs) < 3:
                continue
            loaded = load_model(SHARED / "models" / f"{stem}.onnx")
            model, proto = loaded.module.eval(), loaded.proto
            table = {}
            for name, path in cands.items():
                key = name.removesuffix(".npz")
                if key in runs:
                    src = open_source(path)
                    pool = load_pool(src, (3, 32, 32), limit=1024, seed=0)
                    table[key] = scores(model, proto, pool.images)
            names = sorted(table)
            acc = [runs[n] for n in names]
            rho = {k: spearman([table[n][k] for n in names], acc) for k in table[names[0]]}
            out[net] = {"scores": table, "accuracy": runs, "rho": rho}
            print(net, {k: round(v, 3) for k, v in rho.items()}, flush=True)
    path = ROOT / "benchmarks" / "results" / "proxy_scores.json"
    path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
