"""The sparse dictionaries: activation functions, the module, sparse kernels, file format."""
