"""TorchServe's ``ts.torch_handler`` package: the ``BaseHandler`` that archive handlers derive from."""
