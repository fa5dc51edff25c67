"""The networks (the ConvNet family, with normalization as the first layer) and retraining a
network on a distilled set."""
