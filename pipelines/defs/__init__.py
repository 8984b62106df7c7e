"""Everything `dg.load_from_defs_folder` loads into the hmpcl code location: assets, checks, jobs, schedules, sensors."""
