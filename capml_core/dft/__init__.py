"""Reference levels (DFT): GPAW PBEsol / GLLB-SC, VASP PBEsol / HSEsol."""
