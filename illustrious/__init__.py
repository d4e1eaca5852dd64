"""Illustrious: text-to-image diffusion training for illustration."""
