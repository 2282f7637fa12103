"""How a baked model is scored: prompt sources, KL drift, refusal proxies, agent sweeps, the gate,
and the analyses of a model (where refusal lives, dose response, specificity controls).

Knows nothing of Optuna; depends only on :mod:`ablation`.
"""
