"""The human loop: push samples to Label Studio, pull annotations back as a DVC-tracked patch.

`python -m pipeline label push|pull|serve`. The server is reached over its REST API with
`requests` (the `labelstudio` extra); nothing here is imported by the DAG's stages except
`patches.read_patches`, which needs no third-party client.
"""
