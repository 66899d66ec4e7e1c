"""tinymvit: a small, readable, fast NumPy + Numba CPU inference engine for
MobileViTV2, MobileViT and MobileNetV2 (classification and DeepLabV3 segmentation).

The repository keeps the Numba kernels in ``kernels/`` and the checkpoint
conversion code in ``weights/`` at the top level (that is how the project is
read), but they are installed under the ``tinymvit`` namespace as
``tinymvit.kernels`` and ``tinymvit.weights``: generic top-level names such as
``kernels`` are taken on PyPI and must not be shadowed.
"""
from setuptools import setup

setup(
    name="tinymvit",
    version="0.1.0",
    description="CPU inference for MobileViTV2, MobileViT and MobileNetV2 in NumPy + Numba, "
                "matching Hugging Face transformers to float32 tolerance",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["tinymvit", "tinymvit.models", "tinymvit.kernels", "tinymvit.weights"],
    package_dir={
        "tinymvit": "tinymvit",
        "tinymvit.models": "tinymvit/models",
        "tinymvit.kernels": "kernels",
        "tinymvit.weights": "weights",
    },
    install_requires=["numpy>=1.24", "numba>=0.59", "pillow>=9.1", "safetensors>=0.4", "tqdm>=4.60"],
    extras_require={
        # golden tests compare against transformers' PyTorch models (CPU build of torch); the
        # Hub tests need huggingface_hub, the Ray tests a local Ray Data instance
        "test": ["pytest>=7", "torch==2.13.0", "transformers==5.23.0", "huggingface_hub>=0.24",
                 "ray[data]>=2.9"],
        # tinymvit.load("org/name[@revision]"): checkpoints from the Hugging Face Hub
        "hub": ["huggingface_hub>=0.24"],
        # tinymvit.ray: Ray Data actors for clusters (tested with ray 2.60)
        "ray": ["ray[data]>=2.9"],
        # reading pytorch_model.bin checkpoints (torch.load(weights_only=True))
        "convert": ["torch==2.13.0"],
        # bench.py: PyTorch eager and ONNX Runtime baselines
        "bench": ["torch==2.13.0", "transformers==5.23.0", "onnxruntime", "onnx", "onnxscript"],
    },
    entry_points={"console_scripts": ["tinymvit = tinymvit.cli:main"]},
)
