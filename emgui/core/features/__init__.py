"""Features: sparse autoencoders, model diffing, dashboards and the latent list."""
