"""The data contract every layer agrees on: one-line errors, console output, the plug-in registry shape,
params (validated; every knob in params.yaml), each stage's wiring, the manifest schema, manifests and
image stores, readers of one stage's outputs for the others, the human label patch, the executor."""
