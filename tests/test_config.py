"""Every configuration value is checked at load time: a ConfigError names the key's full path,
the bad value and the file (nucflow.config's parse_* helpers, rules and cross-field checks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nucflow.cluster import ClusterConfig, load_cluster_config
from nucflow.config import CONFIG_DIR, config_file, load_config, read_yaml
from nucflow.errors import ConfigError
from nucflow.pipeline import load_segment_config
from nucflow.pipeline.config import InferenceConfig, SegmentConfig
from nucflow.postprocess import PostprocessConfig, load_stain_profile
from nucflow.training import load_train_config

SEGMENT = [
    ("tissue:\n  thumbnail_size: big", r"tissue\.thumbnail_size must be an integer >= 16, got 'big'"),
    ("tissue:\n  min_saturation: 1.5", r"tissue\.min_saturation must lie in \[0, 1\], got 1\.5"),
    ("tissue: 5", r"tissue must be a mapping of keys, got 5"),
    ("postprocess_block: -5", r"postprocess_block must be an integer >= 16, got -5"),
    ("postprocess_cpus: -1", r"postprocess_cpus must be a number >= 0, got -1"),
    ("postprocess_threads: 0", r"postprocess_threads must be a positive integer, got 0 \(null is also accepted\)"),
    ("method: unets", r"method must be one of 'unet', 'threshold', 'deconvolution', got 'unets'"),
    ("model_mpp: 0", r"model_mpp must lie in \(0, 100\), got 0"),
    ("baseline_mpp: .nan", r"baseline_mpp must lie in \(0, 100\), got nan"),
    ("inference:\n  margin: '32'", r"inference\.margin must be an integer >= 0, got '32'"),
    ("inference:\n  margin: 300\n  tile_size: 256", r"inference\.margin must be < tile_size/2 \(128\) .*got 300"),
    ("inference:\n  tta: rotate", r"inference\.tta must be one of 'none', 'flips', 'dihedral', got 'rotate'"),
    ("inference:\n  amp: 1", r"inference\.amp must be true or false, got 1"),
    ("inference:\n  max_retries: -1", r"inference\.max_retries must be an integer >= 0, got -1"),
    ("inference:\n  margni: 3", r"unknown config key 'margni' in .*segment\.yaml \(at inference\.margni\)"),
]

TRAIN = [
    ("optim:\n  lr: -1", r"optim\.lr must be a positive number, got -1"),
    ("network:\n  norm: bogus", r"network\.norm must be one of 'batch', 'instance', 'none', got 'bogus'"),
    ("data:\n  batch_size: 0", r"data\.batch_size must be an integer >= 1, got 0"),
    ("network:\n  dropout: 1.0", r"network\.dropout must be a number >= 0 and be a number < 1, got 1\.0"),
    ("data:\n  crop: 100", r"data\.crop 100 must be a multiple of 2\*\*network\.depth \(256\)"),
    ("stain_profile: er", r"stain_profile must be one of 'ki67', 'her2', got 'er'"),
    ("max_steps: 2.5", r"max_steps must be a positive integer, got 2\.5"),
    ("loss:\n  cycle: -1", r"loss\.cycle must be a number >= 0, got -1"),
    ("data:\n  mask_shrink_um: 9", r"data\.mask_shrink_um must be a number >= 0 and be a number < 5, got 9"),
    ("seed: true", r"seed must be an integer, got True"),
]

CLUSTER = [
    ("batch_size_per_cpu: -2", r"batch_size_per_cpu must be a positive integer, got -2"),
    ("object_store_gb: lots", r"object_store_gb must be a positive number, got 'lots' \(null is also accepted\)"),
]

STAIN = [
    ("median_size: 4", r"median_size must be an odd number >= 1, got 4"),
    ("hotspot_shape: hexagon", r"hotspot_shape must be one of 'circle', 'square', got 'hexagon'"),
    ("min_distance_um: 0", r"min_distance_um must be a positive number, got 0"),
    ("fill_holes: 'no'", r"fill_holes must be true or false, got 'no'"),
    ("intensity_thresholds: [0.1]", r"intensity_thresholds must be two increasing .*got \[0\.1\]"),
    ("intensity_thresholds: [a, b]", r"intensity_thresholds must be a list of numbers, got \['a', 'b'\]"),
]


@pytest.mark.parametrize(("loader", "text", "message"), [
    *[(load_segment_config, text, message) for text, message in SEGMENT],
    *[(load_train_config, text, message) for text, message in TRAIN],
    *[(load_cluster_config, text, message) for text, message in CLUSTER],
    *[(load_stain_profile, text, message) for text, message in STAIN],
])
def test_bad_values_name_key_value_and_file(tmp_path: Path, loader, text: str, message: str) -> None:
    path = tmp_path / "segment.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message) as caught:
        loader(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(("text", "message"), [
    ("[1, 2]", r"must hold a mapping of keys, got list"),
    ("a: [", r"is not valid YAML"),
])
def test_unreadable_files_are_config_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_yaml(path)


def test_missing_files_and_unknown_names_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope\.yaml does not exist"):
        load_segment_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"training configuration file .*nope\.yaml does not exist; shipped: cpu"):
        load_train_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"unknown training configuration 'gpu'; known: cpu, paper"):
        load_train_config("gpu")
    with pytest.raises(ConfigError, match=r"cannot read config file"):
        load_config(ClusterConfig, tmp_path)  # a folder


def test_python_construction_is_checked_too() -> None:
    """Values set from Python (replace(), keyword arguments) go through the same checks."""
    with pytest.raises(ConfigError, match=r"^margin must be < tile_size/2 \(64\) to leave a core, got 64$"):
        InferenceConfig(tile_size=128, margin=64)
    with pytest.raises(ConfigError, match=r"^postprocess_block must be an integer >= 16, got '1024'$"):
        SegmentConfig(postprocess_block="1024")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"threshold must lie in \(0, 1\), got 0"):
        PostprocessConfig(threshold=0)


def test_shipped_configs_load_and_numbers_are_normalised() -> None:
    """Every shipped file loads; YAML's 20000 is the float default 20000.0, a list is a tuple."""
    assert load_segment_config() == SegmentConfig()
    assert isinstance(load_segment_config().tissue.min_area_um2, float)
    assert load_cluster_config() == ClusterConfig()
    assert isinstance(PostprocessConfig(intensity_thresholds=[0.5, 0.7]).intensity_thresholds, tuple)  # type: ignore[arg-type]
    names = sorted(p.name for p in (CONFIG_DIR / "train").iterdir())
    assert names == ["cpu.yaml", "paper.yaml"]
    assert config_file("her2", "stains").name == "her2.yaml"


def test_unet_spec_is_shared_by_training_config_and_model_card() -> None:
    """One UNetSpec: the training network section and the card are both one, with one width formula."""
    from nucflow.models import ModelCard, UNetSpec, build_unet, default_model_path, load_model
    from nucflow.training._config import NetworkConfig

    network = load_train_config("cpu").network
    assert isinstance(network, UNetSpec) and issubclass(ModelCard, UNetSpec) and issubclass(NetworkConfig, UNetSpec)
    card = ModelCard(**vars(network.unet_spec()), tile_size=128)
    assert card.unet_spec() == network.unet_spec() and card.widths == network.widths == (16, 32, 64, 128, 128, 128)
    assert build_unet(network).input_multiple == card.input_multiple == 64
    bundled = load_model(default_model_path())
    assert bundled.card.unet_spec() == network.unet_spec()  # the bundled model was trained with cpu.yaml's network
    with pytest.raises(ConfigError, match=r"network\.depth must lie in \(1, 16\), got 1"):
        load_config(type(load_train_config()), None, network={"depth": 1})
