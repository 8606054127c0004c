"""The GPU kit's logic without the network, and benchmarks/gpu/run refusing what it cannot run with.

Building a real kit needs the package registry (`benchmarks/gpu/build-kit`); here: the wheel surgery
(the rewritten wheel installs with pip and keeps its executables executable), what is left to the image,
the size limit, and one-line refusals with exit status 2.
"""

import csv
import io
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "gpu"))

import build_kit  # noqa: E402


def make_wheel(path: Path) -> Path:
    """A small real wheel: a package with a data file under jars/, an executable and a RECORD."""
    files = {
        "fakeray/__init__.py": b"VALUE = 42\n",
        "fakeray/jars/ray_dist.jar": b"\0" * 4096,
        "fakeray/jars/more/other.jar": b"\1" * 1024,
        "fakeray/core/raylet": b"#!/bin/sh\necho raylet\n",
        "fakeray-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: fakeray\nVersion: 1.0\n",
        "fakeray-1.0.dist-info/WHEEL": (b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                        b"Tag: py3-none-any\n"),
    }
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for name, data in files.items():
        writer.writerow([name, "", len(data)])
    writer.writerow(["fakeray-1.0.dist-info/RECORD", "", ""])
    files["fakeray-1.0.dist-info/RECORD"] = record.getvalue().encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | (0o755 if name.endswith("raylet") else 0o644)) << 16
            wheel.writestr(info, data)
    return path


def test_stripped_wheel_loses_the_jars_and_their_record_lines_and_still_installs(tmp_path):
    wheel = make_wheel(tmp_path / "fakeray-1.0-py3-none-any.whl")
    removed = build_kit.strip_wheel(wheel, ("fakeray/jars/",))
    assert sorted(removed) == ["fakeray/jars/more/other.jar", "fakeray/jars/ray_dist.jar"]
    with zipfile.ZipFile(wheel) as stripped:
        names = stripped.namelist()
        record = stripped.read("fakeray-1.0.dist-info/RECORD").decode()
        raylet_mode = stripped.getinfo("fakeray/core/raylet").external_attr >> 16 & 0o777
    assert not any("jars" in name for name in names)
    assert "jars" not in record and "fakeray/core/raylet" in record
    assert raylet_mode == 0o755
    assert build_kit.strip_wheel(wheel, ("fakeray/jars/",)) == []  # nothing left to strip: untouched

    target = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet",
                             "--disable-pip-version-check", "--target", str(target), str(wheel)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert not (target / "fakeray" / "jars").exists()
    assert os.stat(target / "fakeray" / "core" / "raylet").st_mode & stat.S_IXUSR
    imported = subprocess.run([sys.executable, "-c", "import fakeray; print(fakeray.VALUE)"], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(target)}, check=True)
    assert imported.stdout.strip() == "42"


def package(name: str, *requires: str) -> dict:
    return {"metadata": {"name": name, "version": "1.0", "requires_dist": list(requires)}}


def test_the_image_packages_and_what_only_they_need_are_left_out_of_the_downloads():
    report = {"environment": {"python_version": "3.11", "sys_platform": "linux"}, "install": [
        package("ray", "click", 'pandas; extra == "tune"', 'pyarrow; extra == "tune"', 'tensorboardX; extra == "tune"',
                'pydantic; extra == "serve"'),
        package("Optuna", "numpy", "sqlalchemy>=2", 'colorama; sys_platform == "win32"', "PyYAML"),
        package("pandas", "numpy", "python-dateutil>=2.9"), package("python-dateutil", "tzdata"), package("tzdata"),
        package("numpy"), package("PyArrow"), package("click"), package("tensorboardX", "numpy", "packaging"),
        package("packaging"), package("pydantic"), package("colorama"), package("sqlalchemy", "greenlet"),
        package("greenlet"), package("PyYAML"), package("nvidia-cublas"), package("torch", "nvidia-cublas"),
    ]}
    pins = build_kit.downloads_from_report(report, ("ray[tune]==1.0", "optuna==1.0", "PyYAML"), "3.11")
    assert [name for name, _ in pins] == ["click", "greenlet", "Optuna", "packaging", "PyYAML", "ray", "sqlalchemy",
                                          "tensorboardX"]


def test_platform_tags_cover_older_manylinux_down_to_2_17():
    tags = build_kit.platform_tags("2.28")
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert "manylinux_2_29_x86_64" not in tags


def test_a_kit_over_the_limit_is_named_with_its_largest_files():
    files = [{"name": "ray.whl", "size": 45 * 2**20}, {"name": "sqlalchemy.whl", "size": 5 * 2**20},
             {"name": "small.whl", "size": 2**20}]
    assert build_kit.size_problem(files, 56) is None
    message = build_kit.size_problem(files + [{"name": "big.whl", "size": 10 * 2**20}], 56)
    assert message.startswith("the kit is 61.0 MiB, over the 56 MiB limit")
    assert "largest: ray.whl 45.0 MiB, big.whl 10.0 MiB, sqlalchemy.whl 5.0 MiB" in message


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "benchmarks" / "gpu" / name), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, cwd=REPO, timeout=60, check=False)


@pytest.mark.parametrize("args, message", [
    (["--python", "python3"], "build-kit: --python: expected MAJOR.MINOR of a CPython 3, e.g. 3.11, got 'python3'"),
    (["--glibc", "2.5"], "build-kit: --glibc: expected 2.17 or later as MAJOR.MINOR, e.g. 2.28, got '2.5'"),
    (["--limit-mib", "0"], "build-kit: --limit-mib: expected a size > 0, got 0"),
    (["--limit-mib", "lots"], "build-kit: argument --limit-mib: invalid float value: 'lots'"),
])
def test_build_kit_refuses_bad_arguments_in_one_line(args, message):
    result = run_script("build-kit", *args)
    assert result.returncode == 2
    assert result.stderr.strip() == message


def write_kit(folder: Path, python: str) -> Path:
    folder.mkdir()
    (folder / "MANIFEST.json").write_text(json.dumps({"target": {"python": python}, "files": []}))
    return folder


def test_run_refuses_a_missing_kit_a_kit_for_another_python_and_bad_settings(tmp_path):
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    cases = [
        (["--kit", str(tmp_path / "none")], f"no kit at {tmp_path / 'none'} (no MANIFEST.json)"),
        (["--kit", str(write_kit(tmp_path / "old", "3.9"))],
         (f"the kit in {tmp_path / 'old'} is for Python 3.9 but {sys.executable} is Python {here}: build one with "
          f"`benchmarks/gpu/build-kit --python {here}`")),
        (["--fractions", "0.25,2"], "--fractions: expected numbers in (0, 1] separated by commas, got '0.25,2'"),
        (["--steps", "smoke,warp"], "--steps: expected some of smoke,train_step,memory,study_wall,compile"),
        (["--budget", "0"], "--budget: expected seconds > 0, got 0"),
        (["--budget", "soon"], "argument --budget: invalid float value: 'soon'"),
        (["--out", str(REPO / "README.md")], "README.md is a file, not a folder"),
        (["--dry-run", "--out", str(REPO / "results" / "benchmarks")], "a dry run does not write into"),
    ]
    for args, message in cases:
        result = run_script("run", "--dry-run", *args) if "--dry-run" not in args else run_script("run", *args)
        assert result.returncode == 2, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("benchmarks/gpu/run: ") and message in lines[0], (args, lines)
