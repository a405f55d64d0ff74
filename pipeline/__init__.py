"""Deep generative models (VAE, GAN) as a reproducible pipeline: the library.

Submodules are imported explicitly; this package imports nothing heavy, so the
torch-free runtime (``pipeline.runtime``) stays importable without torch.
"""
