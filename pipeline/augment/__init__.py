"""Augmentation kernels: the ops (`ops`), policy files (`policy`: load, draw, apply) and online
batch-level mixing for training (`mixing`). The stages are `stages.augment` and `stages.policy_search`."""
