"""gpucnn: a convolutional neural network library whose every hot op is a kernel you can read."""
