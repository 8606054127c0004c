"""Build the offline wheelhouse that `benchmarks/gpu/run` installs on a GPU machine without network.

    benchmarks/gpu/build-kit [--python 3.11] [--glibc 2.28] [--out benchmarks/gpu/kit] [--limit-mib 56]

The GPU machine's image has torch, torchvision, numpy, pandas, pyarrow and Pillow, and no
package registry; a command there carries the working tree plus at most 64 MiB of other
files. The kit holds exactly what a study needs beyond the image, as manylinux x86_64
wheels for the target CPython (resolved here, with the registry):

- ray[tune] and optuna at the versions this project is developed with, PyYAML, and every
  dependency of theirs except the image's packages and what only those need (IMAGE_PACKAGES:
  never torch, a CUDA library, pandas' dateutil or anything else the image already brings);
  when the kit's Python is the one running this, each version is the one installed here
  (the environment the tests ran in), so the GPU machine runs the tested set;
- cityscapesScripts without its dependencies (the project reads only its label table, which
  imports nothing; its own dependencies would bring matplotlib for no use);
- pip itself, which `run` executes from its wheel (the image's pip, if any, is not relied on).

Ray's wheel loses what a Tune study never loads (STRIP: `ray/jars/` for Java workers, 31 of
its 75 MiB; the dashboard web UI's static files, RLlib, Serve and the LLM library, 5 MiB
more), its RECORD rewritten to match, so pip installs it as usual; with the jars alone gone
the kit would be 59 MiB. The project itself is not in the kit: the working tree
travels with every command, and `run` puts it on PYTHONPATH, so the code that runs is always
the tree's (a wheel built here would go stale as soon as the tree changes). matplotlib is not
in the kit either: only `study report`'s figures need it, not the GPU run.

The kit folder is emptied of wheels first; `MANIFEST.json` records each file (size, sha256,
project, version), the target, what was stripped and what the image must provide. Exit 2,
one line, when the arguments are bad or the kit exceeds --limit-mib (default 56: the carry
limit of 64 MiB less a margin); then it names the largest files.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KIT = REPO / "benchmarks" / "gpu" / "kit"
REQUIREMENTS = ("ray[tune]==2.60.0", "optuna==5.1.0", "PyYAML==6.0.4")
NO_DEPS = ("cityscapesScripts==2.3.0",)
# On the GPU machine's image already (torch 2.11 and its CUDA libraries must never be replaced).
IMAGE_PACKAGES = ("torch", "torchvision", "triton", "numpy", "pandas", "pyarrow", "pillow")
IMAGE_PREFIXES = ("nvidia-", "cuda-")
# Parts of Ray's wheel that a Tune study never loads: Java workers' jars, the dashboard web UI's static build
# (ray[tune] has no dashboard server), RLlib, Serve and the LLM libraries. 36 of its 75 MiB.
STRIP = {"ray": ("ray/jars/", "ray/dashboard/client/build/", "ray/rllib/", "ray/serve/", "ray/llm/")}
LIMIT_MIB = 56.0


class KitError(Exception):
    """A problem to say in one line (exit 2)."""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def provided_by_image(name: str) -> bool:
    name = canonical(name)
    return name in IMAGE_PACKAGES or name.startswith(IMAGE_PREFIXES)


def platform_tags(glibc: str) -> list[str]:
    """manylinux tags a wheel may carry to install on x86_64 Linux with this glibc (2.17 and up)."""
    major, minor = (int(part) for part in glibc.split("."))
    tags = [f"manylinux_{major}_{m}_x86_64" for m in range(minor, 16, -1)]
    return tags + ["manylinux2014_x86_64", "linux_x86_64"]


def target_options(python: str, glibc: str) -> list[str]:
    options = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp",
               "--abi", "cp" + python.replace(".", ""), "--abi", "abi3", "--abi", "none"]
    for tag in platform_tags(glibc):
        options += ["--platform", tag]
    return options


def downloads_from_report(report: dict, roots: tuple[str, ...], python: str) -> list[tuple[str, str]]:
    """(name, version) of what `roots` need, from a pip installation report, less the image's packages.

    Walks the requirements from the roots (extras and markers evaluated for the target Python on
    Linux) and stops at the image's packages, so what only they need (pandas' python-dateutil) stays out.
    """
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip's own copy
        from pip._vendor.packaging.requirements import Requirement

    environment = {**report.get("environment", {}), "python_version": python, "python_full_version": f"{python}.0",
                   "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
    resolved = {canonical(item["metadata"]["name"]): item["metadata"] for item in report["install"]}
    wanted: dict[str, set[str]] = {}
    stack = [Requirement(root) for root in roots]
    while stack:
        requirement = stack.pop()
        key = canonical(requirement.name)
        if provided_by_image(key) or key not in resolved:
            continue
        extras = set(requirement.extras)
        if key in wanted and extras <= wanted[key]:
            continue
        wanted[key] = wanted.get(key, set()) | extras
        for text in resolved[key].get("requires_dist", []):
            dependency = Requirement(text)
            if dependency.marker is None or any(dependency.marker.evaluate({**environment, "extra": extra})
                                                for extra in (wanted[key] or {""})):
                stack.append(dependency)
    return sorted(((resolved[key]["name"], resolved[key]["version"]) for key in wanted), key=lambda p: canonical(p[0]))


def installed_versions() -> list[str]:
    """name==version of every distribution in the running environment (the constraints of a tested set)."""
    import importlib.metadata

    return sorted({f"{dist.metadata['Name']}=={dist.version}" for dist in importlib.metadata.distributions()
                   if dist.metadata["Name"]})


def strip_wheel(path: Path, prefixes: tuple[str, ...]) -> list[str]:
    """Rewrite a wheel without the entries under `prefixes` and their RECORD lines; returns what was removed.

    Everything else keeps its bytes, timestamps and permissions (executables stay executable).
    """
    with zipfile.ZipFile(path) as source:
        infos = source.infolist()
        removed = [info.filename for info in infos if info.filename.startswith(prefixes)]
        if not removed:
            return []
        records = [info.filename for info in infos if re.fullmatch(r"[^/]+\.dist-info/RECORD", info.filename)]
        if len(records) != 1:
            raise KitError(f"{path.name}: expected one .dist-info/RECORD, found {len(records)}")
        temporary = path.with_name(path.name + ".tmp")
        with zipfile.ZipFile(temporary, "w") as target:
            for info in infos:
                if info.filename.startswith(prefixes):
                    continue
                data = source.read(info)
                if info.filename == records[0]:
                    data = strip_record(data, prefixes)
                target.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=6)
    os.replace(temporary, path)
    return removed


def strip_record(record: bytes, prefixes: tuple[str, ...]) -> bytes:
    rows = [row for row in csv.reader(io.StringIO(record.decode())) if row and not row[0].startswith(prefixes)]
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return text.getvalue().encode()


def size_problem(files: list[dict], limit_mib: float) -> str | None:
    """One line when the kit is over the limit, naming its largest files; else None."""
    total = sum(f["size"] for f in files)
    if total <= limit_mib * 2**20:
        return None
    largest = sorted(files, key=lambda f: -f["size"])[:3]
    names = ", ".join(f"{f['name']} {f['size'] / 2**20:.1f} MiB" for f in largest)
    return (f"the kit is {total / 2**20:.1f} MiB, over the {limit_mib:g} MiB limit (a device command carries "
            f"at most 64 MiB besides the tree); largest: {names}")


def wheel_project(filename: str) -> tuple[str, str]:
    name, version = filename.split("-")[:2]
    return canonical(name), version


def manifest(out: Path, args, stripped: dict) -> dict:
    files = []
    for path in sorted(out.glob("*.whl")):
        project, version = wheel_project(path.name)
        files.append({"name": path.name, "project": project, "version": version, "size": path.stat().st_size,
                      "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    return {
        "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "built_with": {"python": sys.version.split()[0], "pip": _pip_version()},
        "target": {"python": args.python, "implementation": "cp", "glibc": args.glibc,
                   "platforms": platform_tags(args.glibc)},
        "requirements": list(REQUIREMENTS), "without_dependencies": list(NO_DEPS),
        "image_must_provide": list(IMAGE_PACKAGES) + [p + "*" for p in IMAGE_PREFIXES],
        "stripped": stripped,
        "files": files,
        "total_bytes": sum(f["size"] for f in files),
        "limit_bytes": int(args.limit_mib * 2**20),
    }


def _pip(*arguments: str, quiet: bool = True) -> None:
    command = [sys.executable, "-m", "pip", *arguments] + (["--quiet"] if quiet else [])
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise KitError(f"pip {arguments[0]} failed: {last}")


def _pip_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("pip")


def build(args) -> dict:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("*.whl"), out / "MANIFEST.json"]:
        old.unlink(missing_ok=True)
    target = target_options(args.python, args.glibc)
    pinned = args.python == f"{sys.version_info.major}.{sys.version_info.minor}"
    with tempfile.TemporaryDirectory(prefix="segstudy-kit-") as tmp:
        report_path, constraints = Path(tmp) / "report.json", Path(tmp) / "constraints.txt"
        constraints.write_text("\n".join(installed_versions() if pinned else []) + "\n")
        print(f"resolving {' '.join(REQUIREMENTS)} for CPython {args.python}, glibc {args.glibc}"
              + (f", at the versions installed in {sys.prefix}" if pinned else ""), file=sys.stderr)
        _pip("install", "--dry-run", "--ignore-installed", "--report", str(report_path), "--target",
             str(Path(tmp) / "target"), "--constraint", str(constraints), *target, *REQUIREMENTS)
        pins = downloads_from_report(json.loads(report_path.read_text()), REQUIREMENTS, args.python)
    pins_text = [f"{name}=={version}" for name, version in pins] + list(NO_DEPS) + [f"pip=={_pip_version()}"]
    print(f"downloading {len(pins_text)} wheels into {out}", file=sys.stderr)
    _pip("download", "--no-deps", "--dest", str(out), *target, *pins_text)
    stripped = {}
    for path in sorted(out.glob("*.whl")):
        prefixes = STRIP.get(wheel_project(path.name)[0])
        if prefixes:
            before = path.stat().st_size
            removed = strip_wheel(path, prefixes)
            stripped[path.name] = {"prefixes": list(prefixes), "files_removed": len(removed),
                                   "bytes_before": before, "bytes_after": path.stat().st_size}
    bad = [path.name for path in out.glob("*.whl") if provided_by_image(wheel_project(path.name)[0])]
    if bad:
        raise KitError(f"the kit would replace the image's packages: {', '.join(bad)}")
    data = manifest(out, args, stripped)
    data["versions_from"] = sys.prefix if pinned else "the newest that resolve (another Python than this one)"
    (out / "MANIFEST.json").write_text(json.dumps(data, indent=1) + "\n")
    problem = size_problem(data["files"], args.limit_mib)
    if problem:
        raise KitError(problem)
    return data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/gpu/build-kit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = lambda message: parser.exit(2, f"build-kit: {message}\n")  # one line, no usage block
    parser.add_argument("--python", default="3.11", help="the GPU machine's Python, MAJOR.MINOR (default 3.11)")
    parser.add_argument("--glibc", default="2.28", help="its glibc, MAJOR.MINOR (default 2.28, as torch's wheels need)")
    parser.add_argument("--out", default=str(KIT), help="the kit folder (default benchmarks/gpu/kit, gitignored)")
    parser.add_argument("--limit-mib", type=float, default=LIMIT_MIB,
                        help=f"largest kit allowed (default {LIMIT_MIB:g})")
    args = parser.parse_args(argv)
    try:
        if not re.fullmatch(r"3\.\d+", args.python):
            raise KitError(f"--python: expected MAJOR.MINOR of a CPython 3, e.g. 3.11, got {args.python!r}")
        if not re.fullmatch(r"2\.\d+", args.glibc) or int(args.glibc.split(".")[1]) < 17:
            raise KitError(f"--glibc: expected 2.17 or later as MAJOR.MINOR, e.g. 2.28, got {args.glibc!r}")
        if not args.limit_mib > 0:
            raise KitError(f"--limit-mib: expected a size > 0, got {args.limit_mib:g}")
        data = build(args)
    except KitError as error:
        print(f"build-kit: {error}", file=sys.stderr)
        return 2
    for f in sorted(data["files"], key=lambda f: -f["size"]):
        print(f"{f['size'] / 2**20:7.2f} MiB  {f['name']}")
    print(f"kit: {len(data['files'])} wheels, {data['total_bytes'] / 2**20:.1f} MiB (limit {args.limit_mib:g} MiB), "
          f"CPython {args.python}; {Path(args.out)}/MANIFEST.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
