"""Tests of ddpm_plus.models: the named UNet2DModel configurations."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel
from helpers import TINY_UNET_CONFIG

from ddpm_plus.models import (
    available_configs,
    build_unet,
    downsampling_factor,
    learns_sigma,
    save_unet_config,
    unet_config,
)

# Parameter counts measured with diffusers' UNet2DModel; the two paper models equal the original TF models.
EXPECTED_PARAMETERS = {
    "ddpm-cifar10": 35_746_307,
    "ddpm-256": 113_673_219,
    "iddpm-cifar10": 35_749_766,
    "digits-16": 1_112_801,
    "tiny-32": 1_113_955,
}


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def test_available_configs_lists_every_named_config() -> None:
    assert available_configs() == sorted(EXPECTED_PARAMETERS)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMETERS))
def test_parameter_count(name: str) -> None:
    assert count_parameters(build_unet(name)) == EXPECTED_PARAMETERS[name]


def test_config_is_accepted_by_unet2dmodel_constructor() -> None:
    model = UNet2DModel(**unet_config("digits-16"))
    assert count_parameters(model) == EXPECTED_PARAMETERS["digits-16"]


def test_the_tests_tiny_json_config_builds_the_45k_parameter_unet() -> None:
    assert count_parameters(build_unet(TINY_UNET_CONFIG)) == 45_259


def test_ddpm_cifar10_follows_the_paper() -> None:
    config = unet_config("ddpm-cifar10")
    assert config["block_out_channels"] == (128, 256, 256, 256)
    assert config["down_block_types"][1] == "AttnDownBlock2D"
    assert config["up_block_types"][2] == "AttnUpBlock2D"
    assert config["dropout"] == 0.1
    assert not config["flip_sin_to_cos"] and config["freq_shift"] == 1


@pytest.mark.parametrize("name", ["tiny-32", "digits-16", "ddpm-cifar10", TINY_UNET_CONFIG])
def test_learn_sigma_doubles_out_channels(name: str | Path) -> None:
    assert unet_config(name, learn_sigma=True)["out_channels"] == 2 * unet_config(name)["out_channels"]


def test_learn_sigma_keeps_a_config_that_already_learns_it() -> None:
    assert learns_sigma(unet_config("iddpm-cifar10"))
    assert unet_config("iddpm-cifar10", learn_sigma=True) == unet_config("iddpm-cifar10")
    assert unet_config("ddpm-cifar10", learn_sigma=True) == unet_config("iddpm-cifar10")


def test_learn_sigma_forward_outputs_twice_the_channels() -> None:
    model = build_unet(TINY_UNET_CONFIG, learn_sigma=True).eval()
    output = model(torch.randn(2, 3, 16, 16), torch.tensor([0, 999])).sample
    assert output.shape == (2, 6, 16, 16)


@pytest.mark.parametrize(
    ("name", "shape"), [(TINY_UNET_CONFIG, (2, 3, 16, 16)), ("digits-16", (2, 1, 16, 16)), ("tiny-32", (2, 3, 32, 32))]
)
def test_forward_shape(name: str | Path, shape: tuple[int, ...]) -> None:
    model = build_unet(name).eval()
    with torch.no_grad():
        output = model(torch.randn(shape), torch.tensor([1, 500])).sample
    assert output.shape == shape


def test_json_round_trip_gives_identical_config(tmp_path) -> None:
    path = save_unet_config("ddpm-cifar10", tmp_path / "unet.json", learn_sigma=True)
    assert unet_config(path) == unet_config("ddpm-cifar10", learn_sigma=True)
    assert build_unet(str(path)).config == build_unet("iddpm-cifar10").config


def test_diffusers_config_json_is_read(tmp_path) -> None:
    build_unet("digits-16").save_config(tmp_path)
    assert unet_config(tmp_path / "config.json") == unet_config("digits-16")


def test_json_with_missing_keys_gets_unet2dmodel_defaults(tmp_path) -> None:
    path = tmp_path / "partial.json"
    path.write_text(json.dumps({"sample_size": 8, "block_out_channels": [32, 64, 64, 64]}))
    config = unet_config(path)
    assert config["block_out_channels"] == (32, 64, 64, 64)
    assert config["layers_per_block"] == UNet2DModel().config.layers_per_block


def test_overrides_replace_values() -> None:
    config = unet_config("digits-16", sample_size=32, dropout=0.2)
    assert (config["sample_size"], config["dropout"]) == (32, 0.2)


def test_overriding_in_channels_alone_matches_out_channels() -> None:
    assert unet_config("tiny-32", in_channels=1)["out_channels"] == 1
    assert unet_config("tiny-32", in_channels=1, learn_sigma=True)["out_channels"] == 2
    assert unet_config("tiny-32", in_channels=1, out_channels=3)["out_channels"] == 3


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="ddpm-cifar10.*tiny-32"):
        unet_config("ddpm-imagenet")


def test_unknown_override_is_rejected() -> None:
    with pytest.raises(ValueError, match="does not accept.*num_heads"):
        unet_config("digits-16", num_heads=4)


def test_unknown_key_in_json_is_rejected(tmp_path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"sample_size": 16, "channels": 3}))
    with pytest.raises(ValueError, match="does not accept.*channels"):
        unet_config(path)


def test_missing_json_file_is_rejected(tmp_path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        unet_config(tmp_path / "missing.json")


def test_inconsistent_overrides_are_rejected() -> None:
    with pytest.raises(ValueError, match="one entry per level"):
        unet_config("digits-16", block_out_channels=(32, 64))
    with pytest.raises(ValueError, match="not divisible by norm_num_groups"):
        unet_config("digits-16", block_out_channels=(24, 64, 64))


@pytest.mark.parametrize(
    ("name", "factor"), [("ddpm-cifar10", 8), ("ddpm-256", 32), ("digits-16", 4), (TINY_UNET_CONFIG, 2)]
)
def test_downsampling_factor(name: str | Path, factor: int) -> None:
    assert downsampling_factor(unet_config(name)) == factor
