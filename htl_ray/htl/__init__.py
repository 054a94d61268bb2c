"""The HTL engine: pruned-snapshot scoring, the actor-pool scorer, the refresh coordinator and
the attention strategies / comparators."""
