"""Data sets read from local files: Fashion-MNIST and what is built from it."""
