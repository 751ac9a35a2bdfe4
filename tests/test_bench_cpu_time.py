"""``python -m normlab.lab.bench.cpu_time``: one ratio line per model, each method's cell."""

import re

from normlab.lab.bench import cpu_time


def test_prints_ratios_per_variant(capsys, monkeypatch):
    monkeypatch.setitem(cpu_time.INNER, "mlp", 2)
    cpu_time.main(["--models", "mlp", "--rounds", "3"])
    line = capsys.readouterr().out.strip()
    assert line.startswith("mlp: ")
    for name in ("batch_norm", "std_loss[torch]"):
        assert re.search(re.escape(name) + r" \d+\.\d\d \[\d+\.\d\d-\d+\.\d\d\]", line), line
    assert "none " not in line  # the baseline is not a cell
