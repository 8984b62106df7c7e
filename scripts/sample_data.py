"""The data assets of a generated sample with another generator seed, in a data root of its own (no training).

    .venv/bin/python scripts/sample_data.py --sample-seed 1 --root data-sample1
    .venv/bin/hmpcl sweep --data-root data-sample1 --no-mlflow --seeds 0 1 2 --variant cumulative

Another shape of corpus: `--subclasses-per-class 3 --patents-per-subclass 14 --views 3 6` (SampleSpec's fields;
at most 8 classes and 4 subclasses per class, the generator's shape families).
Materializes raw_archives and drawings for every sample year, lic_codes, lic_hierarchy, splits and decoded_drawings
with the pipeline's own assets (the same code `make run` runs) in an ephemeral Dagster instance, so the `make run`
instance, its MLflow runs and its champion are untouched. Used by the quality study (README "Benchmarks") to check a
configuration on samples it was not chosen on; the generator itself is never changed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import dagster as dg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample-seed", type=int, required=True, help="SampleSpec.seed of the generated corpus")
    parser.add_argument("--root", required=True, help="the data root to write (created if missing)")
    parser.add_argument("--n-classes", type=int, help="main classes (default: SampleSpec's)")
    parser.add_argument("--subclasses-per-class", type=int, help="subclasses per main class (default: SampleSpec's)")
    parser.add_argument("--patents-per-subclass", type=int, help="patents per subclass (default: SampleSpec's)")
    parser.add_argument("--views", type=int, nargs=2, metavar=("MIN", "MAX"),
                        help="drawings per patent, inclusive (default: SampleSpec's)")
    args = parser.parse_args(argv)

    from pipelines.defs.assets import data
    from pipelines.defs.resources import DataStore

    shape = {f"sample_{k}": v for k, v in (("n_classes", args.n_classes),
                                            ("subclasses_per_class", args.subclasses_per_class),
                                            ("patents_per_subclass", args.patents_per_subclass)) if v is not None}
    if args.views:
        shape.update(sample_views_min=args.views[0], sample_views_max=args.views[1])
    store = DataStore(root=str(Path(args.root).resolve()), source="sample", sample_seed=args.sample_seed, **shape)
    resources = {"store": store}
    for year in store.sample_spec().years:
        result = dg.materialize([data.raw_archives, data.drawings], partition_key=str(year), resources=resources,
                                raise_on_error=False)
        if not result.success:
            print(f"ingest of {year} failed", file=sys.stderr)
            return 1
    result = dg.materialize([data.lic_codes, data.lic_hierarchy, data.splits, data.decoded_drawings,
                             *[a.to_source_asset() for a in (data.raw_archives, data.drawings)]],
                            resources=resources, raise_on_error=False,
                            selection=["lic_codes", "lic_hierarchy", "splits", "decoded_drawings"])
    if not result.success:
        print("the data assets failed", file=sys.stderr)
        return 1
    print(f"sample seed {args.sample_seed}: hierarchy, splits and pixel store under {store.layout.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
