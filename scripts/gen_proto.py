"""Regenerate the Python wire modules from proto/hpod/v1/*.proto.

    python scripts/gen_proto.py            # rewrite proto/hpod/v1/hpod_pb2*.py
    python scripts/gen_proto.py --check    # exit 1 if the committed modules are stale

Needs grpcio-tools (the ``dev`` extra), pinned to the grpcio version so that generated code
and runtime agree.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_DIR = PROTO_ROOT / "hpod" / "v1"
GENERATED = ("hpod_pb2.py", "hpod_pb2.pyi", "hpod_pb2_grpc.py")


def generate(out_root: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in OUT_DIR.glob("*.proto"))
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out_root}",
            f"--pyi_out={out_root}", f"--grpc_python_out={out_root}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")


def stale_files() -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / "hpod" / "v1"
        return [name for name in GENERATED
                if not (OUT_DIR / name).exists()
                or not filecmp.cmp(fresh / name, OUT_DIR / name, shallow=False)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if generated code is stale")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        if stale:
            print(f"stale generated code: {stale}; run python scripts/gen_proto.py")
            return 1
        print("generated code is up to date")
        return 0
    generate(PROTO_ROOT)
    print(f"wrote {', '.join(GENERATED)} to {OUT_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
