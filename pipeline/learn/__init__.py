"""The training core: models (`models`), the loop with its schedule and optimizer (`fit`), keyed
per-sample draws (`draws`), targets and losses (`losses`), threads / DDP / determinism (`runtime`),
pixels as tensors (`tensors`), batched inference (`inference`), model files (`checkpoints`),
FixMatch, attacks and accuracy under attack."""
