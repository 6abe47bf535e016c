"""The offline tiny world: synthetic scenes with known attributes, tiny frozen backbones pretrained by the
library itself, and a measured stage-1/stage-2 run through the same code as the 7B setup.

``python -m minigpt4.tiny_world --out tiny_world`` runs everything; see BENCHMARKS.md ("Tiny world")."""
