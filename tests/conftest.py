import os

os.environ.setdefault("PIPELINE_QUIET", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
