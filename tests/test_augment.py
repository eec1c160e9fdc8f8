"""The torch backend draws like albumentations and warps like it, within stated tolerances."""

import numpy as np
import pytest
import torch
from scipy import stats

from cifarnet.config.schema import DataConfig, build_config
from cifarnet.data.augment import (
    AugmentParams,
    BatchDraws,
    TorchAugment,
    albumentations_pipeline,
    apply_geometry,
    draw,
)
from cifarnet.data.datasets import load_data
from cifarnet.data.loaders import AugmentSchedule, epoch_order, flip_only_start, make_loader
from cifarnet.seeding import torch_gen

N = 4000
MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
CENTRE = np.array([15.5, 15.5])


def _albu_params(strength: float, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Draw n samples' parameters from the real albumentations pipeline."""
    import albumentations as A

    pipe = albumentations_pipeline(strength, MEAN, STD)
    pipe = A.Compose(pipe.transforms, save_applied_params=True, strict=True, seed=seed)
    img = np.zeros((32, 32, 3), np.uint8)
    out = {k: [] for k in ("flip", "affine", "angle", "sx", "sy", "tx", "ty", "hole", "hy", "hx")}
    for _ in range(n):
        applied = dict(pipe(image=img)["applied_transforms"])
        out["flip"].append("HorizontalFlip" in applied)
        ssr = applied.get("ShiftScaleRotate")
        out["affine"].append(ssr is not None)
        if ssr:
            m = ssr["matrix"]
            a = m[:2, :2]
            t = m[:2, 2] - CENTRE + a @ CENTRE
            out["angle"].append(ssr["rotate"])
            out["sx"].append(ssr["scale"]["x"])
            out["sy"].append(ssr["scale"]["y"])
            out["tx"].append(t[0])
            out["ty"].append(t[1])
        hole = applied.get("CoarseDropout")
        out["hole"].append(hole is not None)
        if hole:
            x0, y0, x1, y1 = hole["holes"][0]
            assert (x1 - x0, y1 - y0) == (16, 16)
            out["hx"].append(x0)
            out["hy"].append(y0)
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


@pytest.fixture(scope="module")
def albu() -> dict[str, np.ndarray]:
    return _albu_params(1.0, N)


@pytest.fixture(scope="module")
def ours() -> BatchDraws:
    return draw(N, AugmentParams.at(1.0), torch_gen(0, "test"))


# Rates: a difference of two proportions near 0.5 over 4000 samples has a standard error of
# sqrt(2 * 0.25 / 4000) = 0.011; 0.045 is four standard errors.
RATE_TOL = 0.045


def test_application_rates_agree(albu, ours) -> None:
    for name, mine in (("flip", ours.flip), ("affine", ours.affine), ("hole", ours.hole)):
        assert abs(albu[name].mean() - mine.float().mean().item()) < RATE_TOL, name
        assert abs(albu[name].mean() - 0.5) < RATE_TOL, name


def test_continuous_parameters_have_the_same_distributions(albu, ours) -> None:
    # Two-sample Kolmogorov-Smirnov: p > 0.001 for equal distributions; a wrong range
    # (e.g. rotation 30 instead of 45, scale 0.2) gives p around 1e-50 at these sizes.
    for name, mine in (("angle", ours.angle), ("sx", ours.sx), ("sy", ours.sy)):
        assert stats.ks_2samp(albu[name], mine.numpy()).pvalue > 1e-3, name
    assert albu["angle"].min() >= -45 and albu["angle"].max() <= 45


def test_shift_is_truncated_to_whole_pixels_alike(albu, ours) -> None:
    assert np.allclose(albu["tx"], np.round(albu["tx"]), atol=1e-6)
    for value in (-1, 0, 1):
        theirs = (np.round(albu["tx"]) == value).mean()
        mine = (ours.tx == value).float().mean().item()
        assert abs(theirs - mine) < RATE_TOL, value
    assert set(np.unique(np.round(albu["ty"]))) == set(ours.ty.unique().tolist())


def test_hole_size_and_placement_agree(albu, ours) -> None:
    # Top-left corners are uniform on 0..16: std 4.9, so the standard error of a difference
    # of means over ~2000 holes each is 0.155; 0.65 is about four of them.
    for name, mine in (("hy", ours.hole_y[ours.hole]), ("hx", ours.hole_x[ours.hole])):
        assert albu[name].min() == 0 and albu[name].max() == 16
        assert mine.min() == 0 and mine.max() == 16
        assert abs(albu[name].mean() - mine.float().mean().item()) < 0.65, name


def test_warp_matches_albumentations_pixel_for_pixel() -> None:
    """Same parameters, same image: the torch warp reproduces cv2's (reflect-101 border)."""
    import albumentations as A
    import cv2

    rng = np.random.default_rng(1)
    pipe = A.Compose([A.Affine(translate_percent=(-0.0625, 0.0625), scale=(0.9, 1.1),
                               rotate=(-45, 45),
                               border_mode=cv2.BORDER_REFLECT_101, p=1.0)],
                     save_applied_params=True, seed=3)
    coarse = rng.random((8, 8, 3)).astype(np.float32)
    img = cv2.resize(coarse, (32, 32), interpolation=cv2.INTER_LINEAR)  # smooth image
    diffs = []
    for _ in range(20):
        res = pipe(image=img)
        ssr = dict(res["applied_transforms"])["Affine"]
        m = ssr["matrix"]
        t = m[:2, 2] - CENTRE + m[:2, :2] @ CENTRE
        one = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
        d = BatchDraws(torch.tensor([False]), torch.tensor([True]), one(round(t[0])),
                       one(round(t[1])), one(ssr["scale"]["x"]), one(ssr["scale"]["y"]),
                       one(ssr["rotate"]), torch.tensor([False]), torch.zeros(1, dtype=torch.long),
                       torch.zeros(1, dtype=torch.long))
        x = torch.from_numpy(img).permute(2, 0, 1)[None]
        mine = apply_geometry(x, d)[0].permute(1, 2, 0).numpy()
        diffs.append(np.abs(mine - res["image"]))
    diffs = np.stack(diffs)
    # cv2 rounds sample positions to 1/32 pixel; on this smooth image that is < 0.01.
    assert diffs.mean() < 0.005 and np.quantile(diffs, 0.99) < 0.03


def test_mean_absolute_pixel_change_agrees(tiny_tree) -> None:
    data = load_data(DataConfig(path=str(tiny_tree)))
    images = np.concatenate([data.train.images] * (N // len(data.train) + 1))[:N]
    pipe = albumentations_pipeline(1.0, data.mean, data.std)
    pipe.set_random_seed(0)
    aug = TorchAugment(1.0, data.mean, data.std, torch.device("cpu"))
    x = torch.from_numpy(images)
    clean = aug.normalize(x).numpy()
    theirs = np.stack([pipe(image=im)["image"].transpose(2, 0, 1) for im in images])
    mine = aug(x, torch_gen(0, "pixels")).numpy()
    change_theirs, change_mine = np.abs(theirs - clean).mean(), np.abs(mine - clean).mean()
    # Per-sample changes vary (std ~0.5 against a mean ~0.9); over 4000 samples the means'
    # standard error is ~1%, so 6% covers chance and the small interpolation differences.
    assert abs(change_theirs - change_mine) / change_theirs < 0.06


def test_strength_scales_every_limit_and_zero_turns_off() -> None:
    p2 = AugmentParams.at(2.0)
    assert (p2.shift, p2.scale, p2.rotate, p2.hole) == (0.125, 0.2, 90.0, 32)
    p0 = AugmentParams.at(0.0)
    assert p0.flip_p == p0.affine_p == p0.hole_p == 0
    x = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
    aug = TorchAugment(0.0, MEAN, STD, torch.device("cpu"))
    assert torch.equal(aug(x, torch_gen(0)), aug.normalize(x))
    pipe = albumentations_pipeline(0.0, MEAN, STD)
    assert [type(t).__name__ for t in pipe.transforms] == ["Normalize"]


def test_pipeline_is_strict(monkeypatch) -> None:
    """Every transform is built with strict=True, under which an old 1.x argument raises."""
    import albumentations as A

    with pytest.raises(ValueError, match="max_holes"):
        A.CoarseDropout(max_holes=1, strict=True)
    seen = {}
    for name in ("HorizontalFlip", "ShiftScaleRotate", "CoarseDropout", "Normalize", "Compose"):
        cls = getattr(A, name)

        def record(*args, _cls=cls, _name=name, **kwargs):
            seen[_name] = kwargs.get("strict")
            return _cls(*args, **kwargs)
        monkeypatch.setattr(A, name, record)
    albumentations_pipeline(1.0, MEAN, STD)
    monkeypatch.undo()
    assert seen == dict.fromkeys(seen, True) and len(seen) == 5
    pipe = albumentations_pipeline(1.0, MEAN, STD)
    assert [type(t).__name__ for t in pipe.transforms] == [
        "HorizontalFlip", "ShiftScaleRotate", "CoarseDropout", "Normalize"]
    import cv2
    assert pipe.transforms[1].border_mode == cv2.BORDER_REFLECT_101


@pytest.mark.parametrize("backend", ["torch", "albumentations"])
def test_same_seed_same_batches(tiny_tree, backend: str) -> None:
    data = load_data(DataConfig(path=str(tiny_tree)))

    def first(seed: int, epoch: int = 1):
        loader = make_loader(data, build_config({"data.backend": backend, "train.batch_size": 32,
                                                 "train.seed": seed, "data.num_workers": 0}),
                             torch.device("cpu"))
        return next(iter(loader.epoch(epoch)))

    (a, ya), (b, yb), (c, _) = first(0), first(0), first(1)
    assert torch.equal(a, b) and torch.equal(ya, yb)
    assert not torch.equal(a, c)
    assert not torch.equal(first(0, epoch=2)[0], a)


def test_albumentations_batches_do_not_depend_on_workers(tiny_tree) -> None:
    data = load_data(DataConfig(path=str(tiny_tree)))

    def batches(workers: int):
        loader = make_loader(data, build_config({
            "data.backend": "albumentations", "train.batch_size": 64, "train.seed": 5,
            "data.num_workers": workers}), torch.device("cpu"))
        return [x for x, _ in loader.epoch(1)]

    assert all(torch.equal(a, b) for a, b in zip(batches(0), batches(2)))


@pytest.mark.parametrize("backend", ["torch", "albumentations"])
def test_flip_only_epochs_keep_the_flip_alone(tiny_tree, backend: str) -> None:
    """From `flip_only_from` on, every sample is its normalised image or its mirror image."""
    data = load_data(DataConfig(path=str(tiny_tree)))
    # 3 epochs, the last round(0.67 * 3) = 2 flipped only: flip-only from epoch 2
    loader = make_loader(data, build_config({
        "data.backend": backend, "train.batch_size": 64, "train.seed": 3, "train.epochs": 3,
        "data.flip_only_frac": 0.67, "data.num_workers": 0}), torch.device("cpu"))
    plain = TorchAugment(0.0, data.mean, data.std, torch.device("cpu")).normalize(
        torch.from_numpy(data.train.images))
    order = epoch_order(len(data.train), 64, 3, 2)

    def kinds(epoch: int) -> tuple[int, int, int]:
        same = mirrored = other = 0
        batches = torch.cat([x for x, _ in loader.epoch(epoch)])
        for x, ref in zip(batches, plain[epoch_order(len(data.train), 64, 3, epoch)]):
            if torch.allclose(x, ref, atol=1e-5):
                same += 1
            elif torch.allclose(x, ref.flip(2), atol=1e-5):
                mirrored += 1
            else:
                other += 1
        return same, mirrored, other

    same, mirrored, other = kinds(2)
    assert other == 0 and same > 0 and mirrored > 0 and same + mirrored == len(order)
    assert kinds(1)[2] > len(order) // 4  # before the tail: the seed's warp and hole


def test_flip_only_fraction_counts_epochs_from_the_end() -> None:
    assert flip_only_start(30, 0.33) == 21  # epochs 21..30: 10 epochs
    assert flip_only_start(3, 0.33) == 3
    assert flip_only_start(1, 0.33) is None  # a 1-epoch run keeps the seed's augmentation
    assert flip_only_start(30, 0.0) is None
    assert flip_only_start(4, 1.0) == 1


def test_ramp_rises_linearly_then_holds_then_the_flip_only_finish() -> None:
    """10 epochs, ramp 0.3 -> k = 3: epochs 1-3 at s*e/4, then s; flip-only 0.33 -> the
    last 3 epochs (8-10)."""
    schedule = AugmentSchedule.of(build_config({
        "train.epochs": 10, "data.augment_strength": 2.0, "data.augment_ramp_frac": 0.3}))
    assert (schedule.ramp_epochs, schedule.flip_only_from) == (3, 8)
    assert [schedule.params(e) for e in range(1, 11)] == [
        AugmentParams.at(0.5), AugmentParams.at(1.0), AugmentParams.at(1.5),
        *[AugmentParams.at(2.0)] * 4, *[AugmentParams.flip_only()] * 3]
    assert AugmentParams.at(0.5).hole == 8 and AugmentParams.at(1.5).rotate == 67.5
    # the default: the seed's strength from the first epoch
    default = AugmentSchedule.of(build_config({"train.epochs": 30}))
    assert default.ramp_epochs == 0
    assert default.params(1) == default.params(20) == AugmentParams.at(1.0)


@pytest.mark.parametrize("backend", ["torch", "albumentations"])
def test_ramp_epochs_draw_at_the_ramped_strength(tiny_tree, backend: str) -> None:
    """A ramp epoch's batches are those of a run at that epoch's strength (the same order
    and augmentation streams), and a full-strength epoch's are the unramped run's."""
    data = load_data(DataConfig(path=str(tiny_tree)))

    def batches(overrides, epoch):
        loader = make_loader(data, build_config({
            "data.backend": backend, "train.batch_size": 64, "train.seed": 4,
            "train.epochs": 4, "data.flip_only_frac": 0.0, "data.num_workers": 0,
            **overrides}), torch.device("cpu"))
        return torch.cat([x for x, _ in loader.epoch(epoch)])

    ramp = {"data.augment_ramp_frac": 0.5}  # k = 2: epoch 1 at 1/3, epoch 2 at 2/3
    assert torch.equal(batches(ramp, 1), batches({"data.augment_strength": 1 / 3}, 1))
    assert torch.equal(batches(ramp, 2), batches({"data.augment_strength": 2 / 3}, 2))
    assert torch.equal(batches(ramp, 3), batches({}, 3))
    assert not torch.equal(batches(ramp, 1), batches({}, 1))
