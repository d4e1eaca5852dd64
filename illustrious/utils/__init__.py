"""Small helpers every part of the package may use (files written atomically, ...)."""
