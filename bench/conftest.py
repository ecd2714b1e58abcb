"""Shared benchmark configuration: `--gpu` runs the GPU cases; ratios printed side by side.

Every group compares providers of the same work in one run. At the end of the session this prints,
per group, each provider's mean and minimum time and their ratios to the group's first provider
(each bench file lists its baseline first), so the figures that matter (ratios) are read off one
table. On a loaded machine read the minimum: the mean absorbs scheduler stalls.
"""

from __future__ import annotations

import os

import pytest

if "TRITON_INTERPRET" not in os.environ:
    import shutil

    if shutil.which("nvidia-smi") is None:
        os.environ["TRITON_INTERPRET"] = "1"


def pytest_addoption(parser):
    parser.addoption("--gpu", action="store_true", default=False, help="run the GPU benchmarks")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: GPU benchmark, runs only with --gpu")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--gpu"):
        return
    skip = pytest.mark.skip(reason="GPU benchmark: pass --gpu on a machine with a GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, list] = {}
    for bench in session.benchmarks:
        if bench.stats is None or not getattr(bench.stats, "rounds", 0):
            continue
        groups.setdefault(bench.group or "(no group)", []).append(bench)
    tr = terminalreporter
    tr.section("ratios to the group's first provider (mean and min; min is robust to load)")
    for group, benches in groups.items():
        base = benches[0].stats
        base_name = benches[0].name.split("[", 1)[-1].rstrip("]")
        tr.write_line(f"{group}   (ratio = time / time of {base_name}; < 1 is faster)")
        for bench in benches:
            st = bench.stats
            name = bench.name.split("[", 1)[-1].rstrip("]") if "[" in bench.name else bench.name
            tr.write_line(
                f"    {name:<40s} mean {st.mean * 1e3:11.4f} ms  x{st.mean / base.mean:7.3f}"
                f"   min {st.min * 1e3:11.4f} ms  x{st.min / base.min:7.3f}"
            )
