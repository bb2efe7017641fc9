"""Machine-learned models: periodic graphs, the GNN band-gap model, MACE files and calculators."""
