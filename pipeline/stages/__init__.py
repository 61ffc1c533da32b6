"""One module per dvc.yaml stage: `run` does the work, `main` reads the inputs and writes the outputs.
A stage imports the contract and the kernels, never another stage."""
