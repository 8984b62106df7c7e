"""A sensor that starts `retrain` when new drawings land: a new year partition, or a year whose row count changed."""


import json

import dagster as dg

from pipelines.defs.jobs import retrain

DRAWINGS = dg.AssetKey("drawings")


def changed_years(known: dict[str, int], events: list[tuple[str, int]]) -> tuple[list[str], dict[str, int]]:
    """Years whose drawings are new or whose row count differs from the last one seen; and the updated counts."""
    known = dict(known)
    changed = []
    for year, rows in events:
        if known.get(year) != rows:
            changed.append(year)
        known[year] = rows
    return sorted(set(changed)), known


@dg.sensor(job=retrain, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED)
def new_drawings_sensor(context: dg.SensorEvaluationContext):
    """Cursor: the last event-log storage id read and the row count per year."""
    state = json.loads(context.cursor) if context.cursor else {"after": 0, "rows": {}}
    result = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=DRAWINGS, after_storage_id=state["after"] or None), limit=1000,
        ascending=True)
    if not result.records:
        return dg.SkipReason("no new drawings materializations")
    events = []
    for record in result.records:
        meta = record.asset_materialization.metadata
        rows = meta.get("dagster/row_count")
        events.append((record.partition_key or "", int(rows.value) if rows is not None else -1))
    changed, counts = changed_years(state["rows"], events)
    last_id = result.records[-1].storage_id
    context.update_cursor(json.dumps({"after": last_id, "rows": counts}))
    if not changed:
        return dg.SkipReason("drawings re-materialized with the same row counts")
    return dg.RunRequest(run_key=f"drawings-{last_id}", tags={"hmpcl/changed_years": ",".join(changed)})
