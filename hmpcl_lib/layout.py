"""Where every file of a data root lives: the one definition of the on-disk layout.

The Dagster `DataStore` resource wraps a `DataLayout`; the CLIs (`hmpcl`, `hmpcl-search`, `hmpcl serve`) build one
from `--data-root` or $HMPCL_DATA_ROOT. Per-model outputs are keyed by the MLflow run id that made them.

    <root>/raw/<year>/                              downloaded DeepPatent2 archives (or the generated sample)
    <root>/extracted/<year>/                        unpacked images and JSON
    <root>/uspto/                                   USPTO weekly grant XML (unless HMPCL_USPTO_XML_DIR points elsewhere)
    <root>/parsed/drawings/year=<year>.parquet      parsed drawings, one file per year
    <root>/parsed/lic_codes.parquet, lic_hierarchy.parquet, splits.parquet
    <root>/parsed/quarantine/…                      rows refused by a parser, with the reason
    <root>/pixels/year=<year>/<size>-<key>/          the year's drawings decoded once (keyed by that year's files)
    <root>/models/<fingerprint>/                    training checkpoints
    <root>/embeddings/<run id>/year=<year>-<key>.parquet   a year's embeddings by one model (keyed by its pixels)
    <root>/index/<run id>/                          the FAISS gallery index
    <root>/benchmarks/<run id>.parquet              benchmark tables
    <root>/variants/<variant>/                      the model comparison's per-variant results
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA_ROOT_ENV = "HMPCL_DATA_ROOT"
DEFAULT_DATA_ROOT = "data"


def default_data_root() -> str:
    """$HMPCL_DATA_ROOT, else ./data: the one default every entry point uses."""
    return os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT


@dataclass(frozen=True)
class DataLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())

    @classmethod
    def from_env(cls) -> "DataLayout":
        return cls(Path(default_data_root()))

    def raw_dir(self, year: str | int) -> Path:
        return self.root / "raw" / str(year)

    def extracted_dir(self, year: str | int) -> Path:
        return self.root / "extracted" / str(year)

    @property
    def uspto_dir(self) -> Path:
        return self.root / "uspto"

    @property
    def parsed_dir(self) -> Path:
        return self.root / "parsed"

    def drawings_path(self, year: str | int) -> Path:
        return self.parsed_dir / "drawings" / f"year={year}.parquet"

    def drawings_paths(self) -> list[Path]:
        """Every parsed year so far, in year order."""
        return sorted((self.parsed_dir / "drawings").glob("year=*.parquet"))

    def quarantine_path(self, year: str | int) -> Path:
        return self.parsed_dir / "quarantine" / f"year={year}.parquet"

    @property
    def lic_codes_path(self) -> Path:
        return self.parsed_dir / "lic_codes.parquet"

    @property
    def lic_quarantine_path(self) -> Path:
        return self.parsed_dir / "quarantine" / "lic_codes.parquet"

    @property
    def hierarchy_path(self) -> Path:
        return self.parsed_dir / "lic_hierarchy.parquet"

    @property
    def hierarchy_quarantine_path(self) -> Path:
        return self.parsed_dir / "quarantine" / "lic_hierarchy.parquet"

    @property
    def splits_path(self) -> Path:
        return self.parsed_dir / "splits.parquet"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @staticmethod
    def year_group(year: str | int) -> str:
        """The pixel store group of a year (`pixels/year=<year>/`), also the prefix of its embeddings files."""
        return f"year={year}"

    def embeddings_dir(self, run_id: str) -> Path:
        """The corpus embeddings of one model (MLflow run): one file per year, named after the year's pixels."""
        return self.root / "embeddings" / run_id

    def year_embeddings_paths(self, run_id: str, year: str | int) -> list[Path]:
        """The embeddings files of a year by that model (one once complete; none before)."""
        return sorted(self.embeddings_dir(run_id).glob(f"{self.year_group(year)}-*.parquet"))

    def years(self) -> list[str]:
        """The parsed years, in order (from `parsed/drawings/year=<year>.parquet`)."""
        return [p.stem.split("=", 1)[1] for p in self.drawings_paths()]

    def index_dir(self, run_id: str) -> Path:
        return self.root / "index" / run_id

    def benchmark_path(self, run_id: str) -> Path:
        return self.root / "benchmarks" / f"{run_id}.parquet"

    def variant_dir(self, variant: str) -> Path:
        return self.root / "variants" / variant

    @property
    def sweeps_dir(self) -> Path:
        return self.root / "sweeps"

    @property
    def results_db_path(self) -> Path:
        return self.root / "results.duckdb"
