"""Build hooks that pyproject.toml cannot express declaratively.

1. ``cffi_modules`` compiles the C core in ``native/`` into ``hftgate.native._native``.
2. ``build_protos`` generates the protobuf/gRPC stubs from ``protos/`` into
   ``hftgate/v1/`` before anything else is built, for regular and editable installs
   alike. Generated code is not committed (see README, "Generated code").
"""

from __future__ import annotations

from pathlib import Path

from setuptools import Command, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_ROOT = ROOT / "protos"


class BuildProtos(Command):
    description = "generate hftgate.v1 protobuf and gRPC stubs from protos/"
    user_options: list[tuple[str, str | None, str]] = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        import grpc_tools
        from grpc_tools import protoc

        protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
        if not protos:
            return
        well_known = str(Path(grpc_tools.__file__).parent / "_proto")
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={ROOT}",
            f"--pyi_out={ROOT}",
            f"--grpc_python_out={ROOT}",
            *protos,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed on " + " ".join(protos))
        # protos/hftgate/v1/x.proto -> hftgate/v1/x_pb2.py: make every level a package.
        for pkg in {ROOT / Path(p).parent for p in protos}:
            while pkg != ROOT:
                (pkg / "__init__.py").touch(exist_ok=True)
                pkg = pkg.parent


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        self.run_command("build_protos")
        super().run()


setup(
    cffi_modules=["native/ffi_build.py:ffibuilder"],
    cmdclass={"build_protos": BuildProtos, "build_py": BuildPyWithProtos},
)
