"""Sub-commands of the ``bayescannon`` CLI, one module each (discovered by ``cli``)."""
