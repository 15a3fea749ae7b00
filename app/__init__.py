"""The composition root: the ``release`` command, the stack that wires the roles together, and the demo.

The only package allowed to import both the release core (``release``) and the drift monitor (``monitoring``);
see ``docs/architecture.md`` for the layers and what each package may import.
"""
