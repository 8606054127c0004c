"""Property tests of the real `study` entry point (in-process): random arguments, random mutations of valid
study files and of a study folder. Every outcome is exit 0, or exit 1/2 with exactly one `error: ` line; never
a traceback, never a hang, never a file written outside the storage, output and data folders.

Ray is never started: ray.init raises (a study that passes validation ends there, as a one-line error).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from study.cli import main
from tests.fake_study import fake_trial, write_fake_study
from tests.test_bad_input import SMOKE

SECONDS_PER_CASE = 60
COMMON = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    import ray

    def refuse(*args, **kwargs):
        raise RuntimeError("Ray is not started by these tests")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setenv("SEGSTUDY_CONNECT_TIMEOUT", "1")
    for variable in ("SEGSTUDY_STORAGE", "RAY_ADDRESS"):
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Generated datasets the mutated study files train on (environment wins over the file's roots)."""
    from trainables.data import synth_dataset

    base = tmp_path_factory.mktemp("fuzz-data")
    synth_dataset("pets", base / "pets", train=4, val=2, seed=0, image_size=(32, 32))
    synth_dataset("cityscapes", base / "cityscapes", train=2, val=2, seed=0, image_size=(32, 64))
    return {"pets": base / "pets", "cityscapes": base / "cityscapes"}


def outcome(argv: list, cwd: Path) -> tuple[int, str, str]:
    """Run the CLI in-process in `cwd` with a time limit; (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()

    def too_slow(*_):
        raise AssertionError(f"study {argv} did not answer within {SECONDS_PER_CASE} s")

    previous_dir, previous_alarm = os.getcwd(), signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(SECONDS_PER_CASE)
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous_alarm)
        os.chdir(previous_dir)
    return code, out.getvalue(), err.getvalue()


def check(argv: list, cwd: Path, allowed: tuple[Path, ...]) -> int:
    before = files_outside(cwd, allowed)
    code, out, err = outcome(argv, cwd)
    assert "Traceback" not in err + out, (argv, err)
    assert code in (0, 1, 2), (argv, code, err)
    if code:
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, (argv, err)
    assert files_outside(cwd, allowed) == before, (argv, files_outside(cwd, allowed) - before)
    return code


def files_outside(root: Path, allowed: tuple[Path, ...]) -> set[Path]:
    found = set()
    for path in root.rglob("*"):
        if not any(path == a or a in path.parents for a in allowed):
            found.add(path)
    return found


# -- random arguments ---------------------------------------------------------------------------
WORDS = ["run", "resume", "status", "list", "report", "export", "train", "data", "synth", "check", "pets",
         "cityscapes", "s", "nosuch", "../x", "a/b", ".", "_artifacts", "--json", "--name", "--storage", "--out",
         "--set", "--address", "--compare", "--epochs", "--seed", "--image-size", "--device", "--root", "--debug",
         "--resume", "--allow-large", "-1", "0", "1e9", "nan", "train.epochs=2", "seeds=[", "x=", "=", "\x00",
         "é", "🙂", "STORE", "OUT", "SMOKE", "999999999999999999999", "--help"]


@settings(COMMON, max_examples=120)
@given(st.lists(st.sampled_from(WORDS), min_size=0, max_size=7))
def test_random_arguments_give_one_line_or_success(argv):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        storage, out = root / "store", root / "out"
        argv = [str(storage) if w == "STORE" else str(out) if w == "OUT" else str(SMOKE) if w == "SMOKE" else w
                for w in argv]
        if "--debug" in argv:
            argv.remove("--debug")  # --debug shows tracebacks on purpose
        if argv[:1] in (["train"], ["run"], ["resume"]) or "synth" in argv:
            argv += ["--epochs", "x"] if argv[0] == "train" else []
        check(argv, root, (storage, out, root / "data"))


# -- mutated study files ------------------------------------------------------------------------
def mutate_text(text: str, data) -> str:
    lines = text.splitlines()
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["value", "delete", "duplicate", "bytes", "truncate"]))
        index = data.draw(st.integers(0, len(lines) - 1))
        if kind == "value" and ":" in lines[index]:
            key = lines[index].split(":", 1)[0]
            value = data.draw(st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=True), st.text(max_size=12),
                                        st.sampled_from(["[]", "{}", "null", "[1, 2]", "{grid: []}", "*a", "&a x",
                                                         "!!python/object:os.system ls"])))
            lines[index] = f"{key}: {value}"
        elif kind == "delete":
            del lines[index]
        elif kind == "duplicate":
            lines.insert(index, lines[index])
        elif kind == "bytes":
            lines[index] = lines[index][: len(lines[index]) // 2] + data.draw(st.text(max_size=6))
        else:
            lines = lines[: index + 1]
        if not lines:
            lines = [""]
    return "\n".join(lines)


@settings(COMMON, max_examples=40)
@given(st.data())
def test_mutated_study_files_give_one_line_or_run(datasets, data):
    os.environ["SEGSTUDY_PETS_ROOT"], os.environ["SEGSTUDY_CITYSCAPES_ROOT"] = map(str, (datasets["pets"],
                                                                                        datasets["cityscapes"]))
    try:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            spec = root / "study.yaml"
            spec.write_text(mutate_text(SMOKE.read_text(), data))
            check(["run", spec, "--storage", root / "store"], root, (root / "store", spec, root / "data"))
    finally:
        del os.environ["SEGSTUDY_PETS_ROOT"], os.environ["SEGSTUDY_CITYSCAPES_ROOT"]


# -- a damaged study folder ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake_storage(tmp_path_factory):
    trials = [fake_trial("a", 0, [0.5, 0.6]), fake_trial("a", 1, [0.4], status="errored", error="boom",
                                                            epochs_planned=4), fake_trial("b", 0, [])]
    return Path(write_fake_study(tmp_path_factory.mktemp("fuzz-study"), "s", trials).root)


def damage(path: Path, data) -> None:
    kind = data.draw(st.sampled_from(["truncate", "flip", "delete", "garbage", "json"]))
    if kind == "delete":
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        return
    if path.is_dir():
        return
    content = path.read_bytes()
    if kind == "truncate":
        path.write_bytes(content[: data.draw(st.integers(0, max(0, len(content) - 1)))])
    elif kind == "flip" and content:
        position = data.draw(st.integers(0, len(content) - 1))
        path.write_bytes(content[:position] + bytes([content[position] ^ data.draw(st.integers(1, 255))])
                         + content[position + 1:])
    elif kind == "garbage":
        path.write_bytes(data.draw(st.binary(max_size=64)))
    else:
        path.write_text(data.draw(st.sampled_from(['{}', '[]', 'null', '"x"', '{"version": 2}', '{"state": 7}'])))


@settings(COMMON, max_examples=50)
@given(st.data())
def test_a_damaged_study_folder_gives_one_line_or_an_answer(fake_storage, data):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        storage = root / "store"
        shutil.copytree(fake_storage, storage)
        files = sorted(p for p in (storage / "s").rglob("*"))
        for _ in range(data.draw(st.integers(1, 3))):
            present = [p for p in files if p.exists()]
            if present:
                damage(data.draw(st.sampled_from(present)), data)
        command = data.draw(st.sampled_from([["status", "s"], ["status", "s", "--json"], ["list"],
                                             ["export", "s", "--out", root / "out"], ["resume", "s"],
                                             ["report", "s", "--out", root / "out"]]))
        check([*command, "--storage", storage], root, (storage, root / "out"))
