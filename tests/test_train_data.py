"""Training data: mask prior readers (PNG instances, PanNuke .npy), IHC pools, sampling, CLI errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from skimage import io

from nucflow.cli import main
from nucflow.errors import TrainingError
from nucflow.training import DataConfig, load_ihc, load_masks, pseudo_mask, sample_ihc, sample_masks
from nucflow.training._data import IhcImage, find_images
from nucflow.training._train import _data_lists

CONFIG = DataConfig(mpp=0.5, crop=32, tile_mpp=0.5, mask_mpp=0.5)


def test_instance_png_and_pannuke_npy_are_binarised(tmp_path) -> None:
    labels = np.zeros((40, 40), np.uint16)
    labels[2:6, 2:6] = 1
    labels[10:20, 10:12] = 300
    io.imsave(tmp_path / "a.png", labels, check_contrast=False)
    pannuke = np.zeros((2, 40, 40, 6), np.float32)
    pannuke[0, 0:3, 0:4, 1] = 7  # a nucleus of class 1
    pannuke[1, :, :, 5] = 1  # background channel only: no nucleus
    np.save(tmp_path / "masks.npy", pannuke)
    masks = load_masks([tmp_path / "a.png", tmp_path / "masks.npy"], config=CONFIG)
    assert [int(m.sum()) for m in masks] == [16 + 20, 12, 0]
    half = load_masks([tmp_path / "a.png"], config=DataConfig(mpp=0.5, mask_mpp=0.25))[0]
    assert half.shape == (20, 20) and 5 <= half.sum() <= 12


def test_bad_mask_array_is_refused(tmp_path) -> None:
    np.save(tmp_path / "masks.npy", np.zeros((4, 4)))
    with pytest.raises(TrainingError, match="must be \\(N, H, W, C\\)"):
        load_masks([tmp_path / "masks.npy"], config=CONFIG)


@pytest.mark.parametrize("method", ["threshold", "deconvolution"])
def test_pseudo_mask_marks_dark_nuclei(method: str) -> None:
    rgb = np.full((40, 40, 3), 220, np.uint8)
    rgb[10:20, 10:20] = (60, 50, 120)
    mask = pseudo_mask(rgb, method)
    assert mask[12:18, 12:18].all() and not mask[30:, 30:].any()


def test_gated_pseudo_masks_drop_faint_brown_and_keep_pale_blue() -> None:
    """``data.pseudo_gate``: the stain gate on the pseudo-mask (its own pixels the reference)."""
    from nucflow.stain import stain_od

    rgb = np.full((60, 60, 3), 225, np.uint8)
    rgb[5:20, 5:20] = (60, 50, 120)     # dark blue nucleus
    rgb[5:20, 35:50] = (90, 60, 30)     # dark brown nucleus
    rgb[35:50, 5:20] = (150, 150, 190)  # pale blue nucleus
    rgb[38:48, 38:48] = (185, 150, 120)  # light-brown cytoplasm, smaller than the nuclei
    plain = pseudo_mask(rgb, "deconvolution")
    gated = pseudo_mask(rgb, "deconvolution", gate=0.85)
    assert plain[40:45, 40:45].all(), "the plain pseudo-mask takes the light brown (else the case tests nothing)"
    h, d = stain_od(rgb)
    reference = float(np.median((h + d)[plain]))
    assert (d > h)[40, 40] and (h + d)[40, 40] < 0.85 * reference  # by hand: brown, under the cut
    assert not gated[38:48, 38:48].any()
    for block in ((slice(5, 20), slice(5, 20)), (slice(5, 20), slice(35, 50)), (slice(35, 50), slice(5, 20))):
        assert np.array_equal(gated[block], plain[block])
    assert np.array_equal(pseudo_mask(rgb, "deconvolution", gate=0.0), plain)


def test_unknown_pseudo_method_is_refused(tmp_path) -> None:
    from nucflow.errors import ConfigError
    from nucflow.training import load_train_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  pseudo_method: kmeans\n")
    with pytest.raises(ConfigError, match="data.pseudo_method must be one of"):
        load_train_config(bad)


def test_ihc_pool_and_sampling(shared_data) -> None:
    rng = np.random.default_rng(0)
    tiles = find_images([shared_data / "ihc/regions"], what="tile")  # 40x: 0.25 µm/px, the default tile_mpp
    images = load_ihc(slides=[shared_data / "slides/OS-2-vsi.ome.tif"], tiles=tiles,
                      config=DataConfig(mpp=1.0, crop=32, skimage_ihc=True), rng=rng)
    assert [im.rgb.shape[:2] for im in images] == [(501, 501), (237, 345), (295, 351), (249, 312), (128, 128)]
    assert [im.group for im in images] == ["OS-2-vsi.ome.tif", "regions", "regions", "regions", "skimage-ihc"]
    rgb, pseudo = sample_ihc(images, n=3, crop=32, scale_jitter=0.5, rng=rng)
    assert rgb.shape == (3, 32, 32, 3) and rgb.dtype == np.float32 and pseudo.dtype == bool
    assert 0 <= rgb.min() and rgb.max() <= 1
    masks = sample_masks([np.ones((10, 10), bool)], n=2, crop=32, rng=rng)
    assert masks.shape == (2, 32, 32) and masks.sum() == 200  # padded with background


def _plain_sample_ihc(images, *, n, crop, scale_jitter, rng):
    """The plain computation: the whole image and pseudo-mask as one float stack, padded
    with 1.0 to at least the window, then a random window (the same draws as sample_ihc)."""
    import math

    from skimage import transform

    from nucflow.training._data import _augment, sampling_weights

    picks = rng.choice(len(images), size=n, p=sampling_weights(images))
    rgbs, pseudos = [], []
    for i in picks:
        side = max(8, round(crop * math.exp(rng.uniform(-1, 1) * math.log1p(scale_jitter))))
        stack = np.dstack([images[i].rgb / 255.0, images[i].pseudo]).astype(np.float32)
        pad = [(0, max(0, side - stack.shape[0])), (0, max(0, side - stack.shape[1])), (0, 0)]
        stack = np.pad(stack, pad, constant_values=1.0)
        row = int(rng.integers(stack.shape[0] - side + 1))
        col = int(rng.integers(stack.shape[1] - side + 1))
        window = _augment(stack[row : row + side, col : col + side], rng)
        if side != crop:
            window = transform.resize(window, (crop, crop), order=1, anti_aliasing=side > crop)
        rgbs.append(window[..., :3])
        pseudos.append(window[..., 3] > 0.5 if window.shape[-1] == 4 else window[..., 3:] > 0.5)
    return np.stack(rgbs).astype(np.float32), np.stack(pseudos)


@pytest.mark.parametrize("interior", [False, True])
def test_sampled_crops_equal_crops_of_the_whole_padded_image(interior: bool) -> None:
    from nucflow.training._data import IhcImage

    gen = np.random.default_rng(7)
    images = []
    for rows, cols in [(90, 70), (20, 45), (33, 33)]:  # larger and smaller than the windows
        pseudo = gen.random((rows, cols)) > 0.6
        images.append(IhcImage(rgb=gen.integers(0, 256, (rows, cols, 3), dtype=np.uint8),
                               pseudo=np.dstack([pseudo, pseudo & (gen.random((rows, cols)) > 0.5)])
                               if interior else pseudo, source=f"{rows}x{cols}"))
    for seed in range(4):
        got = sample_ihc(images, n=6, crop=32, scale_jitter=0.5, rng=np.random.default_rng(seed))
        want = _plain_sample_ihc(images, n=6, crop=32, scale_jitter=0.5, rng=np.random.default_rng(seed))
        assert got[1].shape == want[1].shape == ((6, 32, 32, 2) if interior else (6, 32, 32))
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_missing_inputs_are_training_errors(tmp_path) -> None:
    with pytest.raises(TrainingError, match="tile path .*nowhere does not exist"):
        find_images([tmp_path / "nowhere"], what="tile")
    from nucflow.training import TrainConfig

    with pytest.raises(TrainingError, match="no IHC training images"):
        _data_lists([], [tmp_path], [tmp_path], TrainConfig())
    io.imsave(tmp_path / "t.png", np.zeros((8, 8, 3), np.uint8), check_contrast=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingError, match="no masks found"):
        _data_lists([], [tmp_path], [tmp_path / "empty"], TrainConfig())


def test_cli_reports_errors_without_a_traceback(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["train", "--tiles", str(tmp_path / "empty"),
                                       "--masks", str(tmp_path / "empty"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no IHC training images" in result.output
    io.imsave(tmp_path / "t.png", np.zeros((8, 8, 3), np.uint8), check_contrast=False)
    teacher = tmp_path / "teacher.yaml"  # refused before Ray starts
    teacher.write_text("data:\n  pseudo_model: round1/nope.safetensors\n")
    result = CliRunner().invoke(main, ["train", "--config", str(teacher), "--tiles", str(tmp_path),
                                       "--masks", str(tmp_path / "t.png"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1 and "data.pseudo_model round1/nope.safetensors does not exist" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lrr: 1\n")
    result = CliRunner().invoke(main, ["train", "--config", str(bad), "--masks", "x", "-o", "o"])
    assert result.exit_code == 1 and "unknown config key 'lrr'" in result.output


def test_a_relative_pseudo_model_reaches_the_workers_as_an_absolute_path(tmp_path, monkeypatch) -> None:
    from dataclasses import replace

    from nucflow.training import TrainConfig
    from nucflow.training._train import _with_teacher_path

    (tmp_path / "round1").mkdir()
    (tmp_path / "round1" / "model.safetensors").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    relative = TrainConfig(data=DataConfig(pseudo_model="round1/model.safetensors"))
    assert _with_teacher_path(relative).data.pseudo_model == str(tmp_path / "round1" / "model.safetensors")
    for kept in ("", "default"):
        config = replace(relative, data=replace(relative.data, pseudo_model=kept))
        assert _with_teacher_path(config) is config


def test_shrunk_masks_keep_touching_nuclei_apart(tmp_path) -> None:
    labels = np.zeros((40, 40), np.uint16)
    labels[5:15, 5:15], labels[5:15, 15:25] = 1, 2  # two touching squares
    io.imsave(tmp_path / "a.png", labels, check_contrast=False)
    plain = load_masks([tmp_path / "a.png"], config=CONFIG)[0]
    shrunk = load_masks([tmp_path / "a.png"], config=DataConfig(mpp=0.5, mask_mpp=0.5, mask_shrink_um=1.0))[0]
    from scipy import ndimage

    assert ndimage.label(plain)[1] == 1 and ndimage.label(shrunk)[1] == 2
    # eroded by a 2 px disk: 6x6 squares, 4 px apart
    assert shrunk.sum() == 2 * 36 and not shrunk[:, 13:17].any()


def test_shrunk_pseudo_masks_split_touching_blobs() -> None:
    rgb = np.full((60, 60, 3), 225, np.uint8)
    rr, cc = np.mgrid[:60, :60]
    for c in (22, 36):
        rgb[(rr - 30) ** 2 + (cc - c) ** 2 <= 64] = (70, 55, 130)  # two overlapping discs
    from scipy import ndimage

    assert ndimage.label(pseudo_mask(rgb, "deconvolution"))[1] == 1
    assert ndimage.label(pseudo_mask(rgb, "deconvolution", shrink_px=2, mpp=0.5))[1] == 2


def test_tile_folders_with_their_resolution_and_balanced_sources(shared_data, tmp_path) -> None:
    from nucflow.training._data import IhcImage, sampling_weights, split_mpp

    assert split_mpp("a/b@0.55") == (Path("a/b"), 0.55) and split_mpp("a/b") == (Path("a/b"), None)
    with pytest.raises(TrainingError, match="positive µm/px"):
        split_mpp("a/b@-1")
    found = find_images([f"{shared_data / 'ihc/unlabelled/mist_ki67_demo'}@0.55"], what="tile")
    assert len(found) == 1 and str(found[0]).endswith("@0.55")
    at_05 = load_ihc(slides=[], tiles=found, config=DataConfig(mpp=0.55, crop=32), rng=np.random.default_rng(0))
    assumed = load_ihc(slides=[], tiles=[p.with_name(p.name.split("@")[0]) for p in found],
                       config=DataConfig(mpp=0.55, crop=32, tile_mpp=0.275), rng=np.random.default_rng(0))
    # at 0.55 µm/px (its @ suffix) the file is used as it is; taken as 0.275 (tile_mpp), at half its size
    native = io.imread(str(found[0]).split("@")[0]).shape[:2]
    assert at_05[0].rgb.shape[:2] == native
    assert abs(at_05[0].rgb.shape[0] - 2 * assumed[0].rgb.shape[0]) <= 1
    # balanced: each group equally likely whatever its area; by area otherwise
    def image(side: int, group: str) -> IhcImage:
        return IhcImage(np.zeros((side, side, 3), np.uint8), np.zeros((side, side), bool), "x", group)

    pool = [image(100, "big"), image(100, "big"), image(10, "small")]
    assert sampling_weights(pool, balance_groups=True) == pytest.approx([0.25, 0.25, 0.5])
    assert sampling_weights(pool) == pytest.approx(np.array([1e4, 1e4, 1e2]) / 20100)


def test_interior_head_masks_have_a_separated_interior_channel(tmp_path) -> None:
    labels = np.zeros((40, 40), np.uint16)
    labels[5:15, 5:15], labels[5:15, 15:25] = 1, 2  # two touching squares
    io.imsave(tmp_path / "a.png", labels, check_contrast=False)
    config = DataConfig(mpp=0.5, mask_mpp=0.5, interior_um=1.0)
    assert config.head == "interior" and CONFIG.head == "mask"
    mask = load_masks([tmp_path / "a.png"], config=config)[0]
    from scipy import ndimage

    assert mask.shape == (40, 40, 2) and mask.dtype == np.bool_
    assert np.array_equal(mask[..., 0], labels > 0)  # the mask channel is the plain mask
    assert not (mask[..., 1] & ~mask[..., 0]).any()  # interiors lie inside it
    # each square eroded by a 2 px disk, also where they touch: two 6x6 interiors, 4 px apart
    assert ndimage.label(mask[..., 1])[1] == 2 and mask[..., 1].sum() == 2 * 36
    crops = sample_masks([mask], n=3, crop=32, rng=np.random.default_rng(0))
    assert crops.shape == (3, 32, 32, 2)


def test_interior_head_pseudo_masks_and_batches_have_two_channels() -> None:
    from nucflow.training._config import NetworkConfig, TrainConfig
    from nucflow.training._data import IhcImage, _image
    from nucflow.training._loop import _batch

    rgb = np.full((60, 60, 3), 225, np.uint8)
    rr, cc = np.mgrid[:60, :60]
    for c in (22, 36):
        rgb[(rr - 30) ** 2 + (cc - c) ** 2 <= 64] = (70, 55, 130)  # two overlapping discs
    data = DataConfig(mpp=0.5, crop=32, tile_mpp=0.5, mask_mpp=0.5, batch_size=2,
                      pseudo_method="deconvolution", interior_um=1.0)
    image = _image(rgb, "discs", data)
    from scipy import ndimage

    assert isinstance(image, IhcImage) and image.pseudo.shape == (60, 60, 2)
    assert ndimage.label(image.pseudo[..., 0])[1] == 1 and ndimage.label(image.pseudo[..., 1])[1] == 2
    mask = np.dstack([image.pseudo[..., 0], image.pseudo[..., 1]])
    config = TrainConfig(network=NetworkConfig(ngf=4, depth=3, ndf=4), data=data)
    batch = _batch([image], [mask], config, step=0, rank=0, world=1, device="cpu")
    assert tuple(batch.pseudo.shape) == tuple(batch.mask.shape) == (2, 2, 32, 32)
    assert tuple(batch.x.shape) == (2, 3, 32, 32)


def test_low_resolution_crops_are_blurred_as_a_coarser_scan_and_keep_sharp_pseudo_masks() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)  # noise: all high frequencies
    pseudo = rng.random((96, 96)) > 0.5
    image = IhcImage(rgb=rgb, pseudo=pseudo, source="noise", group="noise")
    for seed in range(3):
        plain_rgb, plain_pseudo = sample_ihc([image], n=1, crop=32, scale_jitter=0.0, rng=np.random.default_rng(seed))
        low_rgb, low_pseudo = sample_ihc([image], n=1, crop=32, scale_jitter=0.0, rng=np.random.default_rng(seed),
                                         lowres_prob=1.0, lowres_factor=2.0)
        assert np.array_equal(plain_pseudo, low_pseudo)  # the same crop, its pseudo-mask untouched
        assert low_rgb.shape == plain_rgb.shape == (1, 32, 32, 3)
        # half the resolution: neighbouring pixels alike, the crop's mean kept
        assert np.abs(np.diff(low_rgb, axis=1)).mean() < 0.5 * np.abs(np.diff(plain_rgb, axis=1)).mean()
        assert abs(low_rgb.mean() - plain_rgb.mean()) < 0.02
    with pytest.raises(Exception, match="lowres_prob"):
        DataConfig(lowres_prob=1.5)


def test_batches_built_ahead_in_loader_processes_equal_those_built_in_the_loop() -> None:
    """Step i's batch depends on (seed, rank, i) alone, so DataLoader processes build the same ones."""
    import torch

    from nucflow.training._config import NetworkConfig, TrainConfig
    from nucflow.training._data import _image
    from nucflow.training._loop import StepBatches, _batches

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (80, 90, 3), dtype=np.uint8)
    data = DataConfig(mpp=0.5, crop=32, tile_mpp=0.5, mask_mpp=0.5, batch_size=3, scale_jitter=0.2,
                      pseudo_method="deconvolution")
    images = [_image(rgb, "noise", data), _image(rgb[::-1].copy(), "flipped", data)]
    masks = [rng.random((50, 40)) > 0.6]
    config = TrainConfig(network=NetworkConfig(ngf=4, depth=3, ndf=4), data=data, seed=5)
    dataset = StepBatches(images, masks, config, rank=0, world=1)
    here = list(_batches(dataset, 2, 7, loaders=0, device=torch.device("cpu")))
    ahead = list(_batches(dataset, 2, 7, loaders=2, device=torch.device("cpu")))
    assert len(here) == len(ahead) == 5
    for a, b in zip(here, ahead, strict=True):
        for name in ("x", "pseudo", "mask", "factors"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(here[0].x, here[1].x)  # steps differ
    resumed = next(_batches(dataset, 4, 7, loaders=2, device=torch.device("cpu")))  # a resume at step 4
    assert torch.equal(resumed.x, here[2].x) and torch.equal(resumed.mask, here[2].mask)


def test_pseudo_masks_from_a_trained_model_are_the_nuclei_segment_finds(shared_data, tmp_path) -> None:
    """Self-training (``data.pseudo_model``): each training image's pseudo-mask is what the
    model's own ``segment`` path labels on it, shrunk like any other pseudo-mask."""
    from dataclasses import replace

    from nucflow.pipeline import load_segment_config
    from nucflow.pipeline.image import method_spec, segment_image
    from nucflow.postprocess._label import erode_labels

    rgb = io.imread(shared_data / "ihc/regions/ROI_1.png")[:384, :512, :3]
    tile = tmp_path / "roi.png"
    io.imsave(tile, rgb, check_contrast=False)
    config = replace(load_segment_config(), method="unet")
    labels = segment_image(rgb, mpp=0.25, spec=method_spec(config), config=config).labels
    assert labels.max() > 20  # the bundled model finds the tile's nuclei
    taught = DataConfig(mpp=0.25, tile_mpp=0.25, pseudo_model="default")
    [image] = load_ihc(slides=[], tiles=[tile], config=taught, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(image.pseudo, labels > 0)
    shrunk = DataConfig(mpp=0.25, tile_mpp=0.25, pseudo_model="default", mask_shrink_um=0.5)
    [image] = load_ihc(slides=[], tiles=[tile], config=shrunk, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(image.pseudo, erode_labels(labels, 2) > 0)
    two = DataConfig(mpp=0.25, tile_mpp=0.25, pseudo_model="default", interior_um=0.5)  # "interior" head
    [image] = load_ihc(slides=[], tiles=[tile], config=two, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(image.pseudo[..., 0], labels > 0)
    np.testing.assert_array_equal(image.pseudo[..., 1], erode_labels(labels, 2) > 0)
    half = DataConfig(mpp=0.5, tile_mpp=0.25, pseudo_model="default")  # the model at its own 0.25
    [image] = load_ihc(slides=[], tiles=[tile], config=half, rng=np.random.default_rng(0))
    assert image.pseudo.shape == image.rgb.shape[:2] == (192, 256)
    assert 0.5 * (labels > 0).mean() < image.pseudo.mean() < 2 * (labels > 0).mean()
    missing = DataConfig(pseudo_model=str(tmp_path / "nope.safetensors"))
    with pytest.raises(TrainingError, match="data.pseudo_model .*nope.safetensors"):
        load_ihc(slides=[], tiles=[tile], config=missing, rng=np.random.default_rng(0))
