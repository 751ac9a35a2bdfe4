"""``import normlab`` stays cheap: heavy modules are imported where they are used.

``torch._dynamo`` alone costs over a second; the plotting and HDF5 libraries are needed only by
the lab's reports and one dataset. Checked in a fresh interpreter, since this test process has
imported them already.
"""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from normlab.distributed.collectives import _outside_compiled_graphs

HEAVY = ("torch._dynamo", "torch._inductor", "matplotlib", "h5py", "tqdm")

_PROBE = """
import json, sys
import torch
before = set(sys.modules)
import normlab
heavy = {heavy!r}
print(json.dumps({{
    "loaded": sorted(m for m in heavy if m in sys.modules),
    "added": sorted(m for m in set(sys.modules) - before
                    if any(m == h or m.startswith(h + ".") for h in heavy)),
}}))
"""


def test_import_normlab_loads_no_heavy_module():
    out = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY)], check=True,
                         capture_output=True, text=True, timeout=300).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["added"] == []  # nothing heavy is imported by normlab itself
    # torch itself may pull in tqdm; it never imports dynamo, inductor, matplotlib or h5py
    assert not set(result["loaded"]) & {"torch._dynamo", "torch._inductor", "matplotlib", "h5py"}


def test_lazy_compiler_disable_runs_eagerly_under_compile():
    seen = []

    def record(x):
        seen.append(torch.compiler.is_compiling())
        return x + 1

    lazy = _outside_compiled_graphs(record)
    assert lazy(torch.zeros(1)).item() == 1.0 and seen == [False]  # eager: a plain call
    for fn, expected in ((lazy, [False, False]), (record, [True, True])):
        torch._dynamo.reset()
        seen.clear()
        compiled = torch.compile(lambda x: fn(x * 2) * 3, backend="eager")
        assert compiled(torch.ones(1)).item() == 9.0
        compiled(torch.ones(1))
        # the lazy one ran outside the graph both times; the control inside it
        assert seen == expected
