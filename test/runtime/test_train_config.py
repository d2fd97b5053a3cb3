"""runtime/train_config.py: the typed training configuration a checkpoint stores, read strictly, and
the test-time transform it gives."""

from __future__ import annotations

import pytest

from posenet_ros.core.config import ConfigError, config_from_dict, config_to_dict
from posenet_ros.runtime import train_config
from posenet_ros.runtime.train_config import VALIDATION_BLOCKS_SPLIT, DataConfig, TrainConfig


def test_eval_transform_from_config() -> None:
    transform = config_from_dict(TrainConfig, {"data": {"resize": 64, "crop": [48, 64]}}).eval_transform()
    assert (transform.resize, transform.crop_size(), transform.random_crop) == (64, (48, 64), False)
    default = config_from_dict(TrainConfig, {"model": {}}).eval_transform()
    assert (default.resize, default.crop_size(), default.random_crop) == (256, (224, 224), False)


def test_a_stored_configuration_is_read_strictly_and_round_trips() -> None:
    config = config_from_dict(TrainConfig, {"method": "scr", "ransac": {"use_depth": True},
                                            "data": {"crop": [40, 56]}})
    assert config.ransac.use_depth and config.data.crop == (40, 56)
    assert config_from_dict(TrainConfig, config_to_dict(config)) == config
    with pytest.raises(ConfigError, match=r"data\.crp"):
        config_from_dict(TrainConfig, {"data": {"crp": 3}})
    with pytest.raises(ConfigError, match="epochs"):
        config_from_dict(TrainConfig, {"epochs": "many"})


def test_default_threads_leave_cores_to_other_processes(monkeypatch) -> None:
    for cores, workers, threads in ((2, 0, 1), (2, 1, 1), (2, 4, 1), (16, 0, 8), (16, 2, 7)):
        monkeypatch.setattr(train_config, "available_cpus", lambda cores=cores: cores)
        assert train_config.default_threads(workers) == threads
        assert TrainConfig(data=DataConfig(workers=workers)).torch_threads() == threads
    assert TrainConfig(threads=3).torch_threads() == 3
    with pytest.raises(ValueError, match="threads"):
        TrainConfig(threads=-1)


def test_validation_defaults_to_blocks_of_the_training_split() -> None:
    assert TrainConfig().data.val_split == VALIDATION_BLOCKS_SPLIT == "blocks"
