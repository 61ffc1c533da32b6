"""Augmentation: the op kernels (ops), policy files (policy), the augment stage (stage) and
online batch-level mixing for training (mixing)."""
