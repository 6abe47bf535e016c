"""Packaging beyond what pyproject.toml can say: the repository's config folders (train_configs/,
eval_configs/, prompts/, curate_configs/) stay at the root of a checkout, where users expect them, and ship
inside the installed package as ``minigpt4/shipped/<folder>/`` (found by ``minigpt4.common.shipped``)."""
from setuptools import find_packages, setup

FOLDERS = ("train_configs", "eval_configs", "prompts", "curate_configs")  # minigpt4.common.shipped.FOLDERS

setup(
    packages=find_packages(include=["minigpt4*"]) + [f"minigpt4.shipped.{f}" for f in FOLDERS],
    package_dir={f"minigpt4.shipped.{f}": f for f in FOLDERS},
    package_data={"minigpt4": ["configs/**/*.yaml"], **{f"minigpt4.shipped.{f}": ["*.yaml", "*.txt"] for f in FOLDERS}},
)
