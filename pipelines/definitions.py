"""The one Dagster code location of hmpcl, `hmpcl` (`make dev` runs `dg dev -w workspace.yaml`, which names it).

Assets, checks, jobs, schedules and sensors are found in `pipelines/defs/` by `dg.load_from_defs_folder` (the project
is declared in pipelines/dg.toml, shipped inside the package so an installed wheel finds it too); the resources
they need are bound here.
"""

from pathlib import Path

import dagster as dg

from pipelines.defs.resources import DataStore, MlflowTracking

defs = dg.Definitions.merge(
    dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
    dg.Definitions(resources={"store": DataStore(), "mlflow_tracking": MlflowTracking()}),
)

# The assets the loader found, once each (tests materialize them directly with `dg.materialize`).
ALL_ASSETS = list({id(a): a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and a.keys}.values())
