"""Physics on Atoms and arrays: phonons, anharmonic phonons, MD, statistics, relaxation, frozen modes."""
