"""Images in [0,1]: the datasets (real CIFAR and the embedded subset), distilled sets in every
supported file format, and DSA, the differentiable augmentation that methods and retraining
share."""
