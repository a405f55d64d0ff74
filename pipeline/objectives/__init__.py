"""Training objectives: the VAE bounds (vae.py) and the adversarial losses (gan.py)."""
