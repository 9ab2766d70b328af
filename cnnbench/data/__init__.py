"""Data sets read from local files: Fashion-MNIST and what is built from it, Pascal VOC, image
folders of your own and CIFAR-10 (``sources.py`` is the table)."""
