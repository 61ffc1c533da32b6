"""Commands outside the DAG: `summary`, `ablate`, `lr-find`, `plots-offline`."""
