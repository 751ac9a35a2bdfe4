"""The README's two-line example, run on its torchvision-style ResNet (docs/examples)."""

import runpy
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "two_lines_resnet.py"


def test_two_line_example_trains_a_torchvision_style_resnet(capsys):
    main = runpy.run_path(str(EXAMPLE))["main"]
    values = main(steps=3)
    expected = {"conv1", "layer1.conv1", "layer1.conv2", "layer2.conv1", "layer2.conv2",
                "layer2.downsample.0"}
    assert set(values) == expected  # fc (registered first, run last) is left out
    assert all(v == pytest.approx(v) and v > 0 for v in values.values())
    assert "fc" not in capsys.readouterr().out.split("]")[0]
