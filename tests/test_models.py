import pytest
import torch

from pipeline.core import params
from pipeline.core.errors import PipelineError
from pipeline.learn import models


@pytest.mark.parametrize("name", sorted(models.MODELS))
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 28])
def test_every_model_gives_logits_and_features_for_any_size_and_channels(name, channels, size):
    model = models.build_model(name, channels, 7, width=8).eval()
    x = torch.rand(2, channels, size, size)
    with torch.no_grad():
        assert model(x).shape == (2, 7)
        assert model.features(x).shape == (2, model.embed_dim)


def test_small_cnn_has_at_most_100k_parameters_at_the_default_width():
    model = models.build_model("small_cnn", 1, 10, params.Train().width)
    assert models.count_parameters(model) <= 100_000


def test_unknown_model_lists_the_valid_names():
    with pytest.raises(PipelineError, match=r"unknown model \(train.model\) 'vgg'; must be one of small_cnn, resnet$"):
        models.build_model("vgg", 1, 10, 16)


def test_too_small_images_fail_clearly():
    model = models.build_model("small_cnn", 1, 3, 8)
    with pytest.raises(PipelineError, match="at least 8x8"):
        model(torch.rand(1, 1, 6, 6))


def test_normalisation_lives_inside_the_model_and_its_state_dict():
    model = models.build_model("small_cnn", 3, 2, 8, mean=[0.5, 0.4, 0.3], std=[0.25, 0.2, 0.1])
    assert {"normalize.mean", "normalize.std"} <= set(model.state_dict())
    x = torch.full((1, 3, 8, 8), 0.5)
    assert torch.allclose(model.normalize(x)[0, :, 0, 0], torch.tensor([0.0, 0.5, 2.0]))


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_init_depends_on_the_generator_not_on_global_state(name):
    torch.manual_seed(1)
    a = models.build_model(name, 1, 4, 8, generator=torch.Generator().manual_seed(3)).state_dict()
    torch.manual_seed(2)
    b = models.build_model(name, 1, 4, 8, generator=torch.Generator().manual_seed(3)).state_dict()
    c = models.build_model(name, 1, 4, 8, generator=torch.Generator().manual_seed(4)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
