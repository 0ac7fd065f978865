"""DataModules: embedded digits, standard MNIST/FashionMNIST/CIFAR10 files, and your own data.

Your own data: arrays (:class:`~lightning_bet.data.arrays.ArrayDataModule`) or IDX files
(:class:`~lightning_bet.data.idx.IdxFilesDataModule`). The contract every DataModule meets
(``input_shape``, ``num_classes``, ``input_levels``) is in :mod:`lightning_bet.data.arrays`.
"""
