"""A sensor that starts `retrain` when new drawings land: a new year partition, or a year whose parsed table's
content changed.

Content, not row counts: the `drawings` asset records the SHA-256 of the year's Parquet file as it wrote it
(`content_sha256` metadata and the materialization's data version, `pipelines.metadata.content_metadata`). The writer
is deterministic (`hmpcl_lib.io.write_parquet_atomic`: no timestamps in the file), so re-parsing the same records gives
the same digest, and any edited, added or removed drawing gives another, whatever the row count (a pyarrow upgrade that
changes the writer's bytes counts as a change once). The sensor reads digests from the event log and never opens a
table: a tick costs one event-log query; the hashing is one streamed pass, in the asset, over the file it has just
written (all parsed tables together are ≈ 77 bytes per drawing, so well under 100 MB per year at 2.7M drawings).
"""


import json

import dagster as dg

from pipelines.defs.jobs import retrain
from pipelines.metadata import CONTENT_DIGEST

DRAWINGS = dg.AssetKey("drawings")


def changed_years(known: dict[str, str | None], events: list[tuple[str, str | None]]
                  ) -> tuple[list[str], dict[str, str | None]]:
    """Years whose content digest differs from the last one seen (a new year, or changed content; a change that is
    undone within the batch still counts), and the updated digests. A digest of None (a materialization that
    recorded none) equals nothing: it counts as changed, and so does the next event of that year."""
    known = dict(known)
    changed = []
    for year, digest in events:
        if digest is None or known.get(year) != digest:
            changed.append(year)
        known[year] = digest
    return sorted(set(changed)), known


def _digest(record) -> str | None:
    value = record.asset_materialization.metadata.get(CONTENT_DIGEST)
    return str(value.value) if value is not None else None


@dg.sensor(job=retrain, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED)
def new_drawings_sensor(context: dg.SensorEvaluationContext):
    """Cursor: the last event-log storage id read and the content digest (SHA-256 of the Parquet file) per year.
    A cursor from before the digests (`{"after", "rows"}`) keeps its position; each year's next materialization then
    counts as changed once."""
    state = json.loads(context.cursor) if context.cursor else {}
    after, known = state.get("after", 0), state.get("sha256", {})
    result = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=DRAWINGS, after_storage_id=after or None), limit=1000, ascending=True)
    if not result.records:
        return dg.SkipReason("no new drawings materializations")
    events = [(record.partition_key or "", _digest(record)) for record in result.records]
    changed, digests = changed_years(known, events)
    last_id = result.records[-1].storage_id
    context.update_cursor(json.dumps({"after": last_id, "sha256": digests}, sort_keys=True))
    if not changed:
        return dg.SkipReason("drawings re-materialized with the same content (same SHA-256 per year)")
    return dg.RunRequest(run_key=f"drawings-{last_id}", tags={"hmpcl/changed_years": ",".join(changed)})
