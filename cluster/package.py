"""fmtrade's code laid out as it is installed, made from a checkout.

In the repository the Ray layers are top-level folders (serve/, train/, jobs/, cluster/); installed,
they are ``fmtrade.serve``, ``fmtrade.train``, ... (pyproject.toml maps them with setuptools'
``package-dir``). Two things need the installed layout without installing: a job submitted from a
checkout (Ray ships the package as ``py_modules``) and the type checker (which cannot follow
setuptools' editable import hook).

    python -m fmtrade.cluster.package --link build/typecheck   # symlinks, for mypy
"""

from __future__ import annotations

import argparse
import shutil
import tomllib
from pathlib import Path


def is_checkout(root: Path) -> bool:
    """Whether ``root`` is fmtrade's own source tree (its pyproject.toml names the project)."""
    pyproject = root / "pyproject.toml"
    return pyproject.is_file() and tomllib.loads(pyproject.read_text()).get("project", {}).get("name") == "fmtrade"


def package_folders(root: Path) -> dict[str, str]:
    """``{package: folder}`` for fmtrade and each Ray layer, as pyproject.toml maps them."""
    mapping = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return {"fmtrade": "fmtrade", **mapping}


def stage(root: Path, dest: Path, link: bool = False) -> Path:
    """Lay the checkout at ``root`` out under ``dest`` as installed and return ``dest/fmtrade``:
    copies (to ship), or with ``link`` symlinks to the checkout's files (to read in place)."""
    for package, folder in package_folders(root).items():
        source, target = root / folder, dest / package.replace(".", "/")
        target.mkdir(parents=True, exist_ok=True)
        for item in source.iterdir():
            if item.name == "__pycache__":
                continue
            if link:
                (target / item.name).symlink_to(item.resolve())
            elif item.is_dir():
                shutil.copytree(item, target / item.name, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(item, target / item.name)
    return dest / "fmtrade"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m fmtrade.cluster.package", description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="empty or absent folder to lay the package out in")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the checkout (default: .)")
    parser.add_argument("--link", action="store_true", help="symlink the files instead of copying them")
    args = parser.parse_args()
    if not is_checkout(args.root):
        parser.error(f"--root: {args.root} is not an fmtrade checkout (no pyproject.toml naming it)")
    if args.dest.exists():
        shutil.rmtree(args.dest)
    print(stage(args.root.resolve(), args.dest, link=args.link))


if __name__ == "__main__":
    main()
