"""Weekly re-training. Cron and timezone come from HMPCL_RETRAIN_CRON / HMPCL_RETRAIN_TZ."""


import os

import dagster as dg

from pipelines.defs.jobs import retrain


def retrain_schedule(cron: str | None = None, timezone: str | None = None) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="weekly_retrain",
        job=retrain,
        cron_schedule=cron or os.environ.get("HMPCL_RETRAIN_CRON", "0 3 * * 1"),
        execution_timezone=timezone or os.environ.get("HMPCL_RETRAIN_TZ", "UTC"),
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Re-train, re-index and re-benchmark every week (Mondays 03:00 UTC by default).",
    )


weekly_retrain = retrain_schedule()  # the one the code location serves (found by dg.load_from_defs_folder)
