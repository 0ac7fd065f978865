"""DataModules: the embedded digits data and the standard MNIST, FashionMNIST, CIFAR10 files."""
