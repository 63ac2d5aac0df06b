"""Packaging for tf-minilm.

Version ranges are the ones the test suite runs against; widen them only after
running `./dev test` on the new versions.
"""

from setuptools import find_packages, setup

CORE = [
    "tensorflow-cpu>=2.21,<2.22",
    "keras>=3.15,<3.16",
    "tokenizers>=0.20,<0.24",
    "safetensors>=0.4,<0.9",
    "numpy>=1.26,<2.5",
    "pyyaml>=6,<7",
    # Spearman correlation of the fidelity metrics.
    "scipy>=1.11,<2",
    # The linear probe (LogisticRegression) and F1 scores of `tf-minilm evaluate`.
    "scikit-learn>=1.5,<2",
    # Parquet and Arrow corpora (`tf-minilm prepare`, `distill --corpus`).
    "pyarrow>=17,<23",
]
EXPORT = [
    "tf2onnx==1.17.0",
    "onnx>=1.17,<1.24",
    "onnxruntime>=1.20,<1.32",
    "sympy>=1.12",
]
SERVE = [
    "onnxruntime>=1.20,<1.32",
    "tokenizers>=0.20,<0.24",
    "numpy>=1.26,<2.5",
    # serving.connections subclasses aiohttp's RequestHandler (its head deadline and
    # connection caps read the handler's state): widen only after its tests pass.
    "aiohttp>=3.14,<3.15",
    # /metrics exposition of the server.
    "prometheus-client>=0.22,<1",
]
TEST = [
    "pytest>=8",
    # ./dev test runs the suite on two workers (one per core of the CI machine).
    "pytest-xdist>=3.5,<4",
    # Line coverage of the suite (`./dev test --cov=tf_minilm --cov=export --cov=serving`).
    "pytest-cov>=5,<8",
    "ruff>=0.6",
    # Property-based tests of the request parser and the config loader.
    "hypothesis>=6.100,<7",
    # Independent numerical reference for the encoder port (PyTorch CPU build).
    "transformers>=5,<6",
]

setup(
    name="tf-minilm",
    version="0.1.0",
    description=(
        "MiniLM / MiniLMv2 task-agnostic distillation of BERT-family encoders in "
        "TensorFlow/Keras 3, with ONNX export and onnxruntime serving."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.13",
    packages=find_packages(include=["tf_minilm*", "export*", "serving*"]),
    install_requires=CORE,
    extras_require={
        "export": EXPORT,
        "serve": SERVE,
        "test": TEST,
        "all": sorted(set(EXPORT + SERVE + TEST)),
    },
    entry_points={"console_scripts": ["tf-minilm=tf_minilm.cli:main"]},
)
