"""How the space is explored: search space, trial, worker, launcher, promoter and the CLI."""
