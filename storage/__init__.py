"""Where everything is kept: storage URLs, Optuna RDB storage with heartbeat, the project's own
tables (direction cache, promotions, sweep attempts) and artifacts. Built with the search service.

What a study records in Optuna's attrs, and the promotion state, are named and typed in
:mod:`storage.records`; whatever reaches past Optuna's public API is in :mod:`storage.optuna_access`.
"""
