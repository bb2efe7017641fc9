"""The materials system: parent structures, arrangements, training sets (Atoms in, Atoms out)."""
