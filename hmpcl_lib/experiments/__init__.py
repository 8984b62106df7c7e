"""Experiments built on the library and MLflow: tracked training and benchmark runs (`runs`), the one registry of
model variants (`variants`: the comparison's partitions and the sweep's hypotheses) and sweeps over variants x seeds
(`sweep`)."""
