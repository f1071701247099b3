"""mnist / fashion-mnist / cifar10 on tiny generated data (IDX, image tree, tar.gz) and on real data."""

from __future__ import annotations

import pytest
import torch
from fake_data import N_TEST, N_TRAIN, write_idx_set, write_image_tree

from tmafbench import tasks
from tmafbench.errors import DataNotFoundError
from tmafbench.tasks import readers
from tmafbench.tasks.vision import random_crop_flip
from tmafbench.training import TrainingConfig, TrialConfig, train_trial


def test_mnist_reads_torchvision_raw_layout(idx_dir):
    task = tasks.create("mnist", data_dir=str(idx_dir), download=False)
    data = task.load(0)
    assert data.x_train.shape == (N_TRAIN, 1, 28, 28) and data.x_train.dtype == torch.uint8
    assert data.y_train.dtype == torch.int64 and set(data.y_train.tolist()) == set(range(10))
    assert data.x_test.shape == (N_TEST, 1, 28, 28)
    assert task.kind == "classification" and task.metric_name == "accuracy" and task.metric_direction == "maximize"
    assert task.input_shape == (1, 28, 28) and task.output_size == 10


def test_mnist_reads_plain_files_in_the_folder(tmp_path):
    folder = write_idx_set(tmp_path / "flat", gz=False)
    data = tasks.create("mnist", data_dir=str(folder), download=False).load(0)
    assert data.x_train.shape == (N_TRAIN, 1, 28, 28)


def test_fashion_mnist_uses_its_own_folder_from_env(tmp_path, monkeypatch):
    write_idx_set(tmp_path / "root" / "FashionMNIST" / "raw")
    monkeypatch.setenv("TMAFBENCH_DATA", str(tmp_path / "root"))
    data = tasks.create("fashion-mnist", download=False).load(0)
    assert data.x_test.shape == (N_TEST, 1, 28, 28)
    with pytest.raises(DataNotFoundError, match="MNIST/raw"):  # MNIST is not there: never mixed up
        tasks.create("mnist", download=False).load(0)


def test_missing_data_names_the_folders_and_how_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        tasks.create("cifar10", data_dir=str(tmp_path / "nowhere"), download=False).load(0)
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and "download=True" in message and "\n" not in message


def test_subsample_is_deterministic(idx_dir):
    task = tasks.create("mnist", data_dir=str(idx_dir), download=False, train_size=10, test_size=5)
    a, b, c = task.load(0), task.load(0), task.load(1)
    assert a.x_train.shape[0] == 10 and a.x_test.shape[0] == 5
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert not torch.equal(a.y_train, c.y_train)
    assert torch.equal(a.x_test, c.x_test)
    with pytest.raises(ValueError, match="larger than the 40"):
        tasks.create("mnist", data_dir=str(idx_dir), download=False, train_size=41).load(0)


def test_normalisation(idx_dir):
    task = tasks.create("mnist", data_dir=str(idx_dir), download=False)
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    out = task.prepare(task.stage(x))
    torch.testing.assert_close(out.view(-1), torch.tensor([-0.1307 / 0.3081, (1 - 0.1307) / 0.3081]))


def test_cifar_reads_an_image_tree(tree_dir):
    data = tasks.create("cifar10", data_dir=str(tree_dir), download=False).load(0)
    assert data.x_train.shape == (30, 3, 32, 32) and data.x_train.dtype == torch.uint8
    assert data.x_test.shape == (12, 3, 32, 32)
    assert set(data.y_train.tolist()) == {0, 1, 2}


def test_cifar_reads_a_tar_and_caches_decoded_tensors(tar_dir, tmp_path, tree_dir):
    task = tasks.create("cifar10", data_dir=str(tar_dir), download=False)
    data = task.load(0)
    cached = list((tmp_path / "cache").glob("tiny-*.pt"))
    assert len(cached) == 1
    from_tree = tasks.create("cifar10", data_dir=str(tree_dir), download=False).load(0)
    assert torch.equal(data.x_train, from_tree.x_train) and torch.equal(data.y_test, from_tree.y_test)
    # A second read (new process = cleared in-process cache) comes from the .pt, not the archive.
    (train, _), _, classes = readers.cached_image_tar(next((tar_dir / "cifar10").glob("*.tar.gz")), 3)
    assert classes == ["class0", "class1", "class2"] and torch.equal(train, data.x_train)


def test_image_tree_of_wrong_size_is_rejected(tmp_path):
    write_image_tree(tmp_path / "small", channels=3, size=16)
    with pytest.raises(ValueError, match=r"expected \(3, 32, 32\)"):
        tasks.create("cifar10", data_dir=str(tmp_path / "small"), download=False).load(0)


def test_random_crop_flip_is_seeded_and_keeps_shape():
    x = torch.randn(8, 3, 32, 32)
    a = random_crop_flip(x, torch.Generator().manual_seed(0))
    b = random_crop_flip(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)


def test_cifar_augment_switch(tree_dir):
    x = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    off = tasks.create("cifar10", data_dir=str(tree_dir), augment=False)
    on = tasks.create("cifar10", data_dir=str(tree_dir), augment=True)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(off.prepare(x, train=True, generator=g), on.prepare(x, train=False))
    assert not torch.equal(on.prepare(x, train=True, generator=g), on.prepare(x, train=False))


def _run(task, task_params, model="mlp", model_params=None):
    config = TrialConfig(task=task, model=model, activation="relu", seed=0,
                         task_params={**task_params, "download": False}, model_params=model_params or {"width": 8},
                         training=TrainingConfig(epochs=2, batch_size=16, device="cpu"))
    return train_trial(config)


@pytest.mark.parametrize("task", ["mnist", "fashion-mnist"])
def test_few_steps_on_idx(task, tmp_path):
    folder = write_idx_set(tmp_path / task)
    result = _run(task, {"data_dir": str(folder)})
    assert result.status == "completed" and len(result.epochs) == 2
    assert 0.0 <= result.final_metrics["accuracy"] <= 1.0 and result.final_metrics["cross_entropy"] > 0


def test_few_steps_cifar_tar_with_cnn(tar_dir):
    result = _run("cifar10", {"data_dir": str(tar_dir)}, model="cnn", model_params={"width": 4})
    assert result.status == "completed" and "accuracy" in result.final_metrics


@pytest.mark.data
def test_real_mnist_loads(real_data_dir):
    data = tasks.create("mnist", data_dir=str(real_data_dir), download=False).load(0)
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert data.y_train.bincount().tolist()[:2] == [5923, 6742]


@pytest.mark.data
@pytest.mark.slow
def test_real_cifar_loads_from_the_tar(real_data_dir, monkeypatch):
    monkeypatch.delenv("TMAFBENCH_CACHE")  # the user cache: decode 60k JPEGs once, not per test run
    data = tasks.create("cifar10", data_dir=str(real_data_dir), download=False, train_size=1000, test_size=500).load(0)
    assert data.x_train.shape == (1000, 3, 32, 32) and data.x_test.shape == (500, 3, 32, 32)
    assert data.y_train.max() == 9 and data.x_train.dtype == torch.uint8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cifar_augmented_run_on_cuda(tar_dir):
    config = TrialConfig(task="cifar10", model="resnet18-cifar", activation="relu", seed=0,
                         task_params={"data_dir": str(tar_dir), "download": False}, model_params={"width": 8},
                         training=TrainingConfig(epochs=2, batch_size=8, device="cuda"))
    result = train_trial(config)
    assert result.status == "completed" and result.device.startswith("cuda")
    assert 0 <= result.final_metrics["accuracy"] <= 1
