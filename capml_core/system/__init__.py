"""The materials system: parent structures, supercells, arrangements on the sublattice (Atoms in, Atoms out)."""
