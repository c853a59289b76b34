"""Put plausible bugs back, one at a time, and check that a test catches each (a hand-made mutation check).

    python tests/put_bugs_back.py [NAME ...]     # every mutation, or those named

Each mutation edits one line of a throw-away copy of the committed tree (``git worktree``), runs the tests that
guard that contract, and prints whether they failed (CAUGHT) and the first lines of their message, which names
the broken contract. Exit status 1 when a mutation is not caught. Not collected by pytest (no ``test_`` prefix):
it runs a few test files per mutation and takes about a minute.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # the file to edit, relative to the repository
    old: str  # exactly one occurrence in the file
    new: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation(
        "guidance dropped from our sampler",
        "mmdemo/models/diffusion/sampling.py",
        "pred = pred_uncond + guidance * (pred_cond - pred_uncond)",
        "pred = pred_cond",
        ("tests/test_guidance.py",),
    ),
    Mutation(
        "guidance halves swapped",
        "mmdemo/models/diffusion/sampling.py",
        "pred_uncond, pred_cond = denoise(",
        "pred_cond, pred_uncond = denoise(",
        ("tests/test_guidance.py",),
    ),
    Mutation(
        "off-by-one at the top of every checked range",
        "mmdemo/inputs.py",
        "(high is not None and number > high)",
        "(high is not None and number >= high)",
        ("tests/test_input_bounds.py",),
    ),
    Mutation(
        "a failing alignment scorer no longer caught",
        "mmdemo/service.py",
        "except Exception as err:  # noqa: BLE001 - a judge failing must not hide the image",
        "except ZeroDivisionError as err:  # a judge failing must not hide the image",
        ("tests/test_service_records.py",),
    ),
    Mutation(
        "one notices list shared by every panel",
        "mmdemo/service.py",
        "record.notices = list(result.notices)",
        "record.notices = _SHARED; _SHARED.extend(result.notices)",
        ("tests/test_service_records.py",),
    ),
    Mutation(
        "auto tries demo weights before real ones on disk",
        "mmdemo/weights.py",
        '    may_download = (True if profile == "full" else downloads_allowed()) if download is None else download',
        '    if profile == "auto" and _decide_demo(spec, "demo first").runs == "demo":\n'
        '        return _decide_demo(spec, "demo first")\n'
        '    may_download = (True if profile == "full" else downloads_allowed()) if download is None else download',
        ("tests/test_weights_resolution.py",),
    ),
    Mutation(
        "a demo folder with config.json and no weights file accepted",
        "mmdemo/weights.py",
        'if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")) and not missing:',
        'if (folder / "config.json").is_file() and not missing:',
        ("tests/test_weights_resolution.py",),
    ),
)
SHARED_LIST = "\n_SHARED: list = []  # put_bugs_back.py: one list for every panel\n"


def check(mutation: Mutation, copy: Path) -> bool:
    file = copy / mutation.path
    original = file.read_text()
    if original.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.name}: the line to mutate is not in {mutation.path} exactly once; update me")
    mutated = original.replace(mutation.old, mutation.new)
    if "_SHARED" in mutation.new:
        mutated += SHARED_LIST
    file.write_text(mutated)
    try:
        env = dict(os.environ, PYTHONPATH=str(copy), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "", *mutation.tests],
            cwd=copy, env=env, capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    finally:
        file.write_text(original)
    caught = run.returncode != 0
    print(f"== {mutation.name}: {'CAUGHT' if caught else 'NOT CAUGHT'}")
    message = [line for line in run.stdout.splitlines() if line.startswith("E ")][:2]
    print("\n".join(line[:300] for line in message))
    return caught


def main(names: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not names or m.name in names]
    with tempfile.TemporaryDirectory(prefix="put-bugs-back-") as folder:
        copy = Path(folder) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(copy), "HEAD"], cwd=REPO, check=True,
                       capture_output=True)  # fmt: skip
        try:
            missed = [m.name for m in chosen if not check(m, copy)]
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(copy)], cwd=REPO, capture_output=True)
    print(f"{len(chosen) - len(missed)} of {len(chosen)} caught" + (f"; missed: {', '.join(missed)}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
