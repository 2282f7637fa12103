"""How a baked model is scored: prompt sources, KL drift, refusal proxies, agent sweeps, the gate.

Knows nothing of Optuna; depends only on :mod:`ablation`.
"""
