"""TorchServe's ``ts.utils`` helpers that archive handlers commonly import."""
