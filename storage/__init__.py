"""Where everything is kept: storage URLs, Optuna RDB storage with heartbeat, the project's own
tables (direction cache, promotions, sweep attempts) and artifacts. Built with the search service.
"""
