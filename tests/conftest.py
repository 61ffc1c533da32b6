"""Settings and fixtures every test file shares. Helpers that are plain functions live in the
*_util.py modules beside this file; no test file imports another."""

import os

import pytest

os.environ.setdefault("PIPELINE_QUIET", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


@pytest.fixture(scope="session")
def noisy(tmp_path_factory):
    """oof outputs over 400 tiny samples with 20% of the train labels corrupted (fit_util.NOISE):
    (the oof folder, oof's metrics). clean's and mine's tests read it; none may write into it."""
    from fit_util import NOISE, run_oof

    split, out, metrics = run_oof(tmp_path_factory.mktemp("noisy"), n=400, noise=NOISE, epochs=6)
    return out, metrics
