"""Mutation testing (mutmut) of the modules whose bugs no crash would reveal.

mutmut copies the package into ``mutants/`` and puts that first on ``sys.path``. With
setuptools' package-dir mapping (``encoders/``, ``temporal/``, ``datasets/`` installed inside
``video_retrieval``) the copied package would not contain those three and the tests would import
the unmutated originals, so this builds a workspace in the installed layout under
``build/mutation/`` (sources, tests, configs, a pyproject with the mutmut settings below) and runs
mutmut there. Results stay in ``build/mutation/mutants/``; ``mutmut results`` / ``mutmut show
NAME`` run in that folder. Survivors and why each is left: docs/testing.md. The sources are
the last commit (``git archive HEAD``), not the working tree, so edits in progress do not
change what is mutated or break the baseline run.

    python tools/mutation.py                 # every target below (hours on 2 cores)
    python tools/mutation.py --only metrics  # the targets whose path contains "metrics"
    python tools/mutation.py --max-children 1
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutation"
MAPPED = ("encoders", "temporal", "datasets")

#: (path in the installed layout, the tests that exercise it)
TARGETS = {
    "video_retrieval/temporal/": [
        "tests/test_temporal_reference.py", "tests/test_temporal_aggregators.py",
        "tests/test_temporal_ucofia.py", "tests/test_temporal_qd_detr.py",
        "tests/test_temporal_moment_detr.py", "tests/test_temporal_cheap_dropout.py",
        "tests/test_temporal_activation.py", "tests/test_temporal_einops_layouts.py",
    ],
    "video_retrieval/metrics/": [
        "tests/test_metrics_retrieval.py", "tests/test_metrics_moments.py",
        "tests/test_metrics_moment_protocols.py", "tests/test_datasets_real.py",
    ],
    "video_retrieval/index/ann_recall.py": ["tests/test_index_ann_recall.py"],
    "video_retrieval/models/checkpoints.py": [
        "tests/test_models_checkpoint_safety.py", "tests/test_models_compat.py",
        "tests/test_models_slim.py",
    ],
    "video_retrieval/models/class_paths.py": ["tests/test_models_compat.py"],
}  # fmt: skip


def _sync(src: Path, dst: Path) -> None:
    """Copy ``src`` over ``dst``, only the files whose bytes differ (the others keep their
    modification times, so a rerun of mutmut resumes instead of starting again)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(src, dst, ignore=ignore, dirs_exist_ok=True, copy_function=_copy_if_changed)


def _copy_if_changed(src: str, dst: str) -> None:
    s, d = Path(src), Path(dst)
    if not d.exists() or s.read_bytes() != d.read_bytes():
        shutil.copy2(s, d)


def committed_tree() -> Path:
    """The last commit's files under ``build/mutation-head/`` (replaced on every run)."""
    head = ROOT / "build" / "mutation-head"
    shutil.rmtree(head, ignore_errors=True)
    head.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(head)], input=archive.stdout, check=True)
    return head


def workspace(targets: dict[str, list[str]]) -> Path:
    """``build/mutation/``: the package in its installed layout, the tests, the configs."""
    src = committed_tree()
    _sync(src / "video_retrieval", WORK / "video_retrieval")
    for name in MAPPED:
        _sync(src / name, WORK / "video_retrieval" / name)
    for name in ("tests", "configs", "benchmarks"):
        _sync(src / name, WORK / name)
    tests = sorted({t for ts in targets.values() for t in ts})
    toml = (src / "pyproject.toml").read_text()
    only = [p + "*" if p.endswith("/") else p for p in targets]
    toml += (
        "\n[tool.mutmut]\n"
        'source_paths = ["video_retrieval"]\n'
        f"only_mutate = {only!r}\n"
        f"pytest_add_cli_args_test_selection = {tests!r}\n"
        'also_copy = ["tests", "configs", "benchmarks"]\n'
    ).replace("'", '"')
    (WORK / "pyproject.toml").write_text(toml)
    _drop_unmutated_copies(WORK, targets)
    return WORK


def _drop_unmutated_copies(work: Path, targets) -> None:
    """mutmut makes a file's mutants again only when the source is newer than its copy under
    ``mutants/``. A file that was not a target of an earlier run (``--only metrics``) was copied
    there unmutated, and that copy is newer: later runs would skip the file, its mutants never
    made and never counted. Such copies (the same bytes as the source) are removed so mutmut
    mutates the file; results recorded for unchanged functions stay (mutmut's ``.meta``)."""
    for target in targets:
        src = work / target
        for f in sorted(src.rglob("*.py")) if src.is_dir() else [src]:
            copy = work / "mutants" / f.relative_to(work)
            if copy.is_file() and copy.read_bytes() == f.read_bytes():
                copy.unlink()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="the targets whose path contains this text")
    ap.add_argument("--max-children", type=int, default=2, help="parallel mutants (default 2)")
    args = ap.parse_args(argv)
    targets = {p: t for p, t in TARGETS.items() if args.only is None or args.only in p}
    if not targets:
        ap.error(f"no target contains {args.only!r}; targets: {', '.join(TARGETS)}")
    work = workspace(targets)
    mutmut = Path(sys.executable).with_name("mutmut")
    cmd = [str(mutmut), "run", "--max-children", str(args.max_children)]
    rc = subprocess.run(cmd, cwd=work).returncode
    subprocess.run([str(mutmut), "results"], cwd=work)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
