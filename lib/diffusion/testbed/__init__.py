"""MiniSD: a miniature, fully procedural text-to-image latent-diffusion testbed.

- :mod:`lib.diffusion.testbed.data`: the seeded captioned-shape generator (32x32 RGB images,
  captions from a small grammar, implicit colour assumptions, held-out combinations) and the
  word-level tokenizer for ``transformers.CLIPTextModel``.
- :mod:`lib.diffusion.testbed.evaluators`: the caption classifier, caption accuracy and the
  feature-space Frechet distance used to judge generated images.

Import from the submodules directly (``from lib.diffusion.testbed.data import generate``); this
package file imports nothing heavy so that ``import lib.diffusion.testbed`` stays cheap.
"""
