"""Dagster glue for hmpcl: assets, resources, checks, jobs, schedules, sensors. The logic lives in hmpcl_lib."""
