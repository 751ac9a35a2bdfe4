"""The lab on the user's own model and data: a ResNet-style CNN with BatchNorm and in-place
ReLU from a file, an .npz the test writes, an MLP regression, a DataLoader over a map-style
Dataset, and one clear line for bad data or a model a method cannot handle."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import normlab.lab
from normlab.lab.cli import main
from normlab.lab.config import TrainConfig
from normlab.lab.datasets import DataError
from normlab.lab.datasets.arrays import LoaderData, from_arrays, load_npz
from normlab.lab.train import Trainer
from normlab.lab.user_model import build_variant, load_model_fn
from normlab.methods import create_method

RESNET = textwrap.dedent('''
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

        def forward(self, x):
            identity = x if self.down is None else self.down(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            out += identity
            return self.relu(out)

    def resnet():
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                             nn.ReLU(inplace=True), Block(8, 8, 1), Block(8, 16, 2),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))
''')


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 8x8 images whose class is where a bright square sits (learnable in few steps)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 60, (n, 1, 8, 8)).astype(np.uint8)
    for i, c in enumerate(y):
        x[i, 0, 1:4, 2 * c + 1:2 * c + 3] = 250
    return x, y.astype(np.int64)


@pytest.fixture
def user_files(tmp_path):
    (tmp_path / "mynet.py").write_text(RESNET)
    x, y = _images(240, 0)
    np.savez(tmp_path / "squares.npz", x_train=x[:160], y_train=y[:160], x_test=x[160:],
             y_test=y[160:])
    return tmp_path


def test_cli_user_resnet_on_npz_batch_size_sweep(user_files, capsys):
    out = user_files / "out"
    rc = main(["compare", "--model", f"{user_files}/mynet.py:resnet", "--dataset",
               str(user_files / "squares.npz"), "--methods", "none,batch_norm,group_norm,bnp",
               "--batch-sizes", "4,16", "--batch-size", "16", "--lr", "0.1", "--steps", "30",
               "--eval-every", "10", "--seeds", "1", "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "about" in printed and "from a timed step" in printed  # the ETA came first
    payload = json.loads((out / "results.json").read_text())
    rows = {(r["method"], r["batch_size"]): r for r in payload["summary"]}
    assert set(rows) == {(m, b) for m in ("none", "batch_norm", "group_norm", "bnp")
                         for b in (4, 16)}
    assert rows["none", 4]["lr"] == pytest.approx(0.1 * 4 / 16)  # linear scaling
    # 6 BatchNorm2d in the user's network: each method says what it did to them
    surgery = payload["model_surgery"]
    assert surgery["none"] == "6 BatchNorm2d removed"
    assert surgery["group_norm"] == "6 BatchNorm2d replaced by GroupNorm"
    assert surgery["bnp"].startswith("6 BatchNorm2d removed; optimizer wrapped")
    report = (out / "report.md").read_text()
    assert "batch_norm: 6 BatchNorm2d replaced by BatchNorm2d" in report
    assert "| method | batch 4 | batch 16 |" in report
    assert (out / "batch_size.png").stat().st_size > 0
    assert len(list((out / "runs").glob("*.json"))) == 8
    # learnable data: batch norm at batch 16 beats chance (1/3) by a margin
    assert rows["batch_norm", 16]["final_acc_mean"] > 0.6


def test_variants_are_what_the_method_says(user_files):
    fn = load_model_fn(f"{user_files}/mynet.py:resnet")
    count = lambda m, t: sum(isinstance(x, t) for x in m.modules())  # noqa: E731
    assert count(fn(), nn.BatchNorm2d) == 6
    bare = build_variant(fn, create_method("none"))
    assert count(bare, nn.BatchNorm2d) == 0
    gn = build_variant(fn, create_method("group_norm"))
    assert sum(type(m).__name__ == "GroupNorm" for m in gn.modules()) == 6
    assert count(gn, nn.BatchNorm2d) == 0
    with pytest.raises(ValueError, match="cannot be applied"):
        build_variant(fn, create_method("frn"))  # FRN changes the activation: one line


def test_std_loss_on_user_resnet_with_inplace_relu(user_files):
    x, y = _images(120, 1)
    result = normlab.lab.compare(load_model_fn(f"{user_files}/mynet.py:resnet"),
                                 (x[:80], y[:80]), (x[80:], y[80:]), methods=["std_loss"],
                                 seeds=1, steps=10, eval_every=5, batch_size=8, progress=False)
    assert result.experiment.surgery["std_loss"].startswith("6 BatchNorm2d removed; auxiliary")


def _norm_free():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 64, 3))


def test_layer_method_inserted_into_norm_free_model():
    report: list = []
    model = build_variant(_norm_free, create_method("batch_norm"), torch.randn(4, 1, 8, 8),
                          report)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 1
    assert [r.action for r in report].count("inserted") == 1
    assert any(r.action == "skipped" and "logit" in r.detail for r in report)


def _mlp():
    return nn.Sequential(nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 1))


def test_python_api_mlp_regression(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.05 * torch.randn(300, generator=g)
    result = normlab.lab.compare(_mlp, (x[:200], y[:200]), (x[200:], y[200:]),
                                 methods=["none", "batch_norm"], seeds=2, steps=60,
                                 eval_every=20, batch_size=32, lr=0.05, progress=False,
                                 out=tmp_path / "reg")
    rows = {r["method"]: r for r in result.summary}
    assert rows["none"]["metric"] == "mse"
    # independent check of the lower-is-better speed-up: the baseline reaches its own lowest
    # seed-mean error at the first step where the mean curve attains its minimum
    runs = result.curves["none"][32]["runs"]
    mean = np.mean(np.asarray(runs), 0)
    steps = result.curves["none"][32]["steps"]
    assert rows["none"]["baseline_steps"] == steps[int(np.argmin(mean))]
    assert rows["none"]["target_acc"] == pytest.approx(mean.min())
    var = float(y[200:].var())
    assert rows["batch_norm"]["final_acc_mean"] < 0.5 * var  # learned far better than a constant
    report = (tmp_path / "reg" / "report.md").read_text()
    assert "mse, lower is better" in report and "regression" in report


class Squares(torch.utils.data.Dataset):
    """A map-style dataset: (1, 8, 8) images and int labels, built per index."""

    def __init__(self, n: int, seed: int) -> None:
        self.x, self.y = _images(n, seed)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return torch.from_numpy(self.x[i]).float() / 255, int(self.y[i])


def _small_cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 3))


def test_dataloader_streams_seeded_batches_and_trains():
    data = LoaderData(DataLoader(Squares(96, 0), batch_size=5), Squares(48, 1))
    assert data.task == "classification" and data.in_shape == (1, 8, 8)
    first = [b[1] for _, b in zip(range(3), data.train_batches(8, seed=3))]
    again = [b[1] for _, b in zip(range(3), data.train_batches(8, seed=3))]
    other = [b[1] for _, b in zip(range(3), data.train_batches(8, seed=4))]
    assert all(len(y) == 8 for y in first)  # the swept batch size, not the loader's 5
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    result = normlab.lab.compare(_small_cnn, DataLoader(Squares(96, 0), batch_size=5),
                                 DataLoader(Squares(48, 1), batch_size=16),
                                 methods=["none", "batch_norm"], batch_sizes=[4, 16], seeds=1,
                                 steps=20, eval_every=10, batch_size=16, lr=0.2,
                                 progress=False)
    assert {(r["method"], r["batch_size"]) for r in result.summary} == {
        (m, b) for m in ("none", "batch_norm") for b in (4, 16)}


def test_trainer_detaches_hooks_even_when_a_callback_raises():
    x, y = _images(64, 2)
    data = from_arrays(x[:48], y[:48], x[48:], y[48:])
    for name in ("std_loss", "bnp"):
        method = create_method(name)
        model = build_variant(_small_cnn, method)
        trainer = Trainer(TrainConfig(steps=5, batch_size=8, eval_every=5), model, data,
                          method, 0)

        def boom(t):
            if t.step == 2:
                raise RuntimeError("stop")

        trainer.add_callback("on_step", boom)
        with pytest.raises(RuntimeError, match="stop"):
            trainer.run()
        assert all(not m._forward_hooks and not m._forward_pre_hooks
                   for m in model.modules()), name


@pytest.mark.parametrize("change,match", [
    (lambda a: a["x_train"].__setitem__((3, 0, 0, 0), np.nan), "x_train has 1 NaN/inf"),
    (lambda a: a["y_test"].__setitem__(0, 7), r"y_test labels must be in \[0, 3\)"),
    (lambda a: a.__setitem__("y_train", a["y_train"][:-1]), "has 160 rows but y_train has 159"),
    (lambda a: a.__setitem__("x_test", a["x_test"][:, :, :4]), "differ in shape"),
    (lambda a: a.pop("y_test"), "lacks y_test"),
    (lambda a: a.__setitem__("x_train", a["x_train"][:0]), "train split is empty"),
])
def test_bad_npz_is_one_line(tmp_path, capsys, change, match):
    x, y = _images(240, 0)
    arrays = {"x_train": x[:160].astype(np.float32), "y_train": y[:160],
              "x_test": x[160:].astype(np.float32), "y_test": y[160:]}
    if "labels" in match:
        arrays["y_train"] = arrays["y_train"] % 3
        arrays["y_train"][0] = 2
    change(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=match):
        load_npz(tmp_path / "bad.npz")
    rc = main(["run", "--method", "none", "--model", "mlp", "--dataset",
               str(tmp_path / "bad.npz"), "--steps", "2", "--no-progress",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "error:" in err[0]


def test_float64_overflow_caught_after_cast():
    x = np.zeros((4, 3)); x[1, 2] = 1e300
    with pytest.raises(DataError, match="after the cast to float32"):
        from_arrays(x, np.arange(4) % 2, np.zeros((2, 3)), np.array([0, 1]))


def test_unimportable_model_is_one_line(tmp_path, capsys):
    rc = main(["run", "--method", "none", "--model", f"{tmp_path}/nothere.py:net",
               "--steps", "2", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no such file" in err[0]
