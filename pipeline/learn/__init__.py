"""The training core: models, the loop with its losses and schedules (`fit`), FixMatch, attacks and
accuracy under attack."""
