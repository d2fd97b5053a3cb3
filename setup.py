"""posenet_ros: an ament_python package that also installs with plain pip (`pip install -e .`)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "posenet_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Learned camera relocalization (PoseNet family) for ROS 2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={PACKAGE: ["py.typed"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    install_requires=[
        "numpy>=1.23",
        "torch>=2.1",
        "opencv-python-headless>=4.6",
        "pyyaml>=6.0",
        "tqdm>=4.60",
        "transforms3d>=0.4.1",
        "scikit-image>=0.19",
        "pillow>=9.0",
        "safetensors>=0.4",
        "matplotlib>=3.5",
        "scipy>=1.9",
        "rosbags>=0.10",
        "cyclonedds>=0.10.5",
    ],
    extras_require={
        "export": ["onnx>=1.14", "onnxruntime>=1.16"],  # posenet-ros export, runtime onnx
        "test": ["pytest>=7", "ruff>=0.5", "rosbags-image>=0.9", "onnx>=1.14", "onnxruntime>=1.16",
                 "hypothesis>=6.100"],
    },
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "posenet-ros = posenet_ros.cli:main",
            "relocalize_node = posenet_ros.node.rclpy_node:main",
        ],
    },
)
