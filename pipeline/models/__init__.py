"""Networks only (no training procedures): VAE, GAN, feature classifier."""
