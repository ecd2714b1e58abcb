"""Build the one extension, lli_fast._C.

CPU sources always; CUDA sources only when this torch was built with CUDA and CUDA_HOME is set
(LLI_FAST_NO_CUDA=1 forces them off, FORCE_CUDA=1 forces them on, e.g. for cross-compiling).
"""

import glob
import os

from setuptools import setup
from torch.utils import cpp_extension

HERE = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    if os.environ.get("LLI_FAST_NO_CUDA") == "1":
        return False
    if os.environ.get("FORCE_CUDA") == "1":
        return True
    import torch

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def _extension():
    cpu_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(HERE, "csrc")]
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp"]
    if _want_cuda():
        cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
        return cpp_extension.CUDAExtension(
            "lli_fast._C",
            cpu_sources + cuda_sources,
            include_dirs=include_dirs,
            define_macros=[("LLI_FAST_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++20"]},
            extra_link_args=["-fopenmp"],
        )
    return cpp_extension.CppExtension(
        "lli_fast._C",
        cpu_sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
