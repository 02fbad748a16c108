"""The learned resizer (Talebi & Milanfar, ICCV 2021): model, training, evaluation, export, inference.

Modules: `model` (network + variant registry), `folding` (BN folding), `data` (synthetic task and
dataset readers), `classifier`, `train`, `evaluate`, `export` (frozen artifact), `inference`
(`LearnedResizer`), `preview`. Everything here needs torch; import the submodules you need.
See docs/learned_resizer.md.
"""
