"""Data files shipped with keras-bn (the embedded Fashion-MNIST subset); load them with
`keras_bn.data.load("fashion_mnist_small")`."""

__all__: list[str] = []
