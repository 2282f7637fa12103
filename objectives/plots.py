"""PNG plots of the analyses (matplotlib, no display needed).

Each function writes one figure to ``path`` and returns the path. The figures are read by
people (and shown on the dashboard); the JSON beside them holds the numbers.
"""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on workers and CI
    import matplotlib.pyplot as plt

    return plt


def layer_curves(analysis, path: str | Path, title: str = "") -> Path:
    """Per layer: AUC of each method's projection (and the held-out AUC of the mean difference),
    the probe's accuracy, and each method's class-mean separation."""
    plt = _pyplot()
    layers = list(range(analysis.num_layers))
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for method in analysis.methods:
        top.plot(layers, analysis.auc[method], marker="o", label=f"AUC {method}")
        bottom.plot(layers, analysis.strength[method], marker="o", label=method)
    top.plot(layers, analysis.auc_heldout, marker="s", linestyle="--", color="black", label="AUC mean, held out")
    top.plot(layers, analysis.probe_accuracy, marker="^", linestyle=":", color="grey", label="probe accuracy (CV)")
    top.set_ylabel("harmful vs harmless")
    top.set_ylim(0.4, 1.02)
    top.legend(fontsize="small")
    top.set_title(title or "where refusal is readable")
    bottom.set_ylabel("class-mean separation along the direction")
    bottom.set_xlabel("layer")
    bottom.legend(fontsize="small")
    return _save(figure, plt, path)


def cosine_heatmap(analysis, path: str | Path, title: str = "") -> Path:
    """Cosines between methods' directions: one panel per layer (up to 12, spread over the depth)."""
    import numpy as np

    plt = _pyplot()
    count = analysis.num_layers
    shown = sorted({round(i * (count - 1) / max(min(count, 12) - 1, 1)) for i in range(min(count, 12))})
    columns = min(len(shown), 4)
    rows = -(-len(shown) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    names = analysis.methods
    image = None
    for index, (axis, layer) in enumerate(zip(axes.flat, shown)):
        image = axis.imshow(np.array(analysis.cosines[layer]), vmin=-1, vmax=1, cmap="RdBu_r")
        axis.set_title(f"layer {layer}", fontsize="small")
        axis.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize="x-small")
        axis.set_yticks(range(len(names)), names if index % columns == 0 else [], fontsize="x-small")
    for axis in list(axes.flat)[len(shown):]:
        axis.axis("off")
    figure.colorbar(image, ax=axes, shrink=0.8, label="cosine")
    figure.suptitle(title or "cosines between direction methods")
    return _save(figure, plt, path, tight=False)


def category_plot(layers: list[dict], path: str | Path, layer: int, title: str = "") -> Path:
    """The cone: its effective dimension and silhouette per layer (left), and the cosines between
    category directions at ``layer`` (right)."""
    import numpy as np

    plt = _pyplot()
    figure, (curves, heat) = plt.subplots(1, 2, figsize=(11, 4.5))
    curves.plot(range(len(layers)), [entry["effective_dimension"] for entry in layers], marker="o", label="effective dimension")
    curves.set_xlabel("layer")
    curves.set_ylabel("effective dimension (participation ratio)")
    silhouette = curves.twinx()
    silhouette.plot(range(len(layers)), [entry["silhouette"] for entry in layers], color="grey", linestyle=":", marker=".")
    silhouette.set_ylabel("silhouette of the grouping", color="grey")
    curves.set_title("the refusal cone per layer")
    entry = layers[layer]
    names = [f"{name} ({strength:.2g})" for name, strength in zip(entry["categories"], entry["strength"])]
    image = heat.imshow(np.array(entry["cosines"]), vmin=-1, vmax=1, cmap="RdBu_r")
    heat.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize="x-small")
    heat.set_yticks(range(len(names)), names, fontsize="x-small")
    heat.set_title(f"category cosines at layer {layer} (strength)", fontsize="small")
    figure.colorbar(image, ax=heat, shrink=0.8)
    figure.suptitle(title or "categories")
    return _save(figure, plt, path)


def dose_curves(response, path: str | Path, mode: str, title: str = "") -> Path:
    """Refusal, over-refusal and degenerate rates (left axis) and KL (right axis) against the dose."""
    plt = _pyplot()
    alphas = [p.alpha for p in response.points]
    figure, rates = plt.subplots(figsize=(8, 5))
    rates.plot(alphas, [p.refusal for p in response.points], marker="o", label="refusal (harmful)")
    if response.points and response.points[0].over_refusal is not None:
        rates.plot(alphas, [p.over_refusal for p in response.points], marker="s", label="over-refusal (edgy)")
    rates.plot(alphas, [p.degenerate for p in response.points], marker="^", label="degenerate")
    rates.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    for dose, name in ((response.refusal_50, "refusal 50%"), (response.over_refusal_50, "over-refusal 50%")):
        if dose is not None:
            rates.axvline(dose, color="grey", linewidth=0.8, linestyle="--")
            rates.annotate(f"{name}\n{dose:+.2f}", (dose, 0.52), fontsize="x-small")
    rates.set_ylim(-0.02, 1.02)
    rates.set_xlabel(f"alpha ({mode})")
    rates.set_ylabel("rate")
    kl = rates.twinx()
    kl.plot(alphas, [p.kl for p in response.points], color="black", linestyle="--", marker=".", label="KL (harmless)")
    kl.set_ylabel("KL (nats)")
    lines = rates.get_legend_handles_labels()
    more = kl.get_legend_handles_labels()
    rates.legend(lines[0] + more[0], lines[1] + more[1], fontsize="small", loc="center right")
    rates.set_title(title or f"dose response ({mode})")
    return _save(figure, plt, path)


def controls_plot(result: dict, path: str | Path, title: str = "") -> Path:
    """Refusal against KL: the random directions, the edit, the holdout-learned direction and the base."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 5))
    axis.scatter([r["kl"] for r in result["random"]], [r["refusal"] for r in result["random"]], color="grey", label="random directions")
    axis.scatter([result["edit"]["kl"]], [result["edit"]["refusal"]], color="red", marker="*", s=160, label="the edit")
    holdout = result.get("holdout")
    if holdout:
        axis.scatter([holdout["heldout"]["kl"]], [holdout["heldout"]["refusal"]], color="blue", marker="D",
                     label="holdout-learned direction (other half)")
    axis.axhline(result["base"]["refusal"], color="black", linestyle=":", linewidth=0.8, label="base refusal")
    axis.set_xlabel("KL (nats, harmless)")
    axis.set_ylabel("refusal rate (harmful)")
    axis.set_ylim(-0.02, 1.02)
    axis.legend(fontsize="small")
    axis.set_title(title or "specificity controls")
    return _save(figure, plt, path)


def _save(figure, plt, path, tight: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
