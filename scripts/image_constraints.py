"""Write deploy/constraints.txt: every package hpod needs at run time (its dependencies and
theirs, no dev extras), pinned to the version installed here, where the test suite passed.

    python scripts/image_constraints.py            # rewrite deploy/constraints.txt
    python scripts/image_constraints.py --check    # exit 1 when it misses a dependency

Both images install hpod with ``pip install -c deploy/constraints.txt``, so an image built
today and one built next year get the same libraries. torch is left out: its version is pinned
per image (the server's ``TORCH_VERSION`` build argument, the CPU wheel; the worker's base image,
a CUDA build), and the CUDA build brings packages of its own.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "deploy" / "constraints.txt"
PER_IMAGE = {"torch"}  # pinned by each image, not here
HEADER = ("# Made by scripts/image_constraints.py from the environment the tests passed in: "
          "hpod's run-time\n# dependencies, pinned for the images (pip install -c). "
          "torch is pinned per image (Dockerfile).\n")


IMAGE_EXTRAS = ("server", "worker")  # what the two images install (hpod[server], hpod[worker])


def _wanted(req: Requirement, extras: tuple[str, ...]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in ("", *extras))


def closure(root: str = "hpod") -> dict[str, str]:
    """canonical name -> installed version, for every run-time dependency of ``root`` and of
    the extras the images install."""
    seen: dict[str, str] = {}
    expanded: set[str] = set()
    todo = [r for r in map(Requirement, metadata.requires(root) or [])
            if _wanted(r, IMAGE_EXTRAS)]
    for r in todo:
        r.marker = None  # chosen above: the loop's own check is for their dependencies
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # another extra (dev) or another platform's dependency
        name = canonicalize_name(req.name)
        if name in seen or name in expanded:
            continue
        expanded.add(name)
        dist = metadata.distribution(req.name)
        if name not in PER_IMAGE:  # torch's own dependencies are pinned all the same
            seen[name] = dist.version
        todo += [Requirement(r) for r in dist.requires or []]
    return seen


def render(pins: dict[str, str]) -> str:
    return HEADER + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items()))


def parse(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = version
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    pins = closure()
    if args.check:
        missing = sorted(set(pins) - set(parse(OUT.read_text())))
        if missing:
            print(f"{OUT.relative_to(ROOT)} misses {missing}: run scripts/image_constraints.py",
                  file=sys.stderr)
            return 1
        return 0
    OUT.write_text(render(pins))
    print(f"wrote {len(pins)} pins to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
