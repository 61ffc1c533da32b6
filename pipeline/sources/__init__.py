"""Ingest sources (digits, Fashion-MNIST / MNIST IDX files, image folders, CSV, Label Studio exports:
`readers`) and decoding with quarantine reasons (`decode`)."""
