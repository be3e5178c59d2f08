"""Build: `pip install -e .` installs the package and compiles the search's C++ DP core."""
from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

ext_modules = [
    Pybind11Extension(
        "search._dp_core",
        ["csrc/dp_core.cpp"],
        cxx_std=17,
        extra_compile_args=["-O3"],
    ),
]

setup(
    name="megatron_galvatron",
    version="0.1.0",
    description="Megatron-style GPT training with per-layer hybrid parallel plans and an automatic plan search",
    packages=find_packages(include=["megatron_galvatron", "megatron_galvatron.*", "search", "search.*"]),
    ext_modules=ext_modules,
    cmdclass={"build_ext": build_ext},
    python_requires=">=3.9",
    install_requires=["torch>=2.6", "numpy", "pybind11>=2.10", "sentencepiece", "safetensors", "tqdm"],
    # fp8: float8 layers ("fp8" in a plan, --fp8) and the +fp8 baselines, through torchao.float8;
    # the version works with torch 2.11 on CUDA and 2.13 on CPU
    extras_require={"plot": ["matplotlib"], "fp8": ["torchao==0.18.0"],
                    "test": ["pytest", "transformers", "tokenizers", "matplotlib", "torchao==0.18.0", "wandb",
                             "megatron-core==0.16.1"]},
)
