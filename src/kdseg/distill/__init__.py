"""Distillation methods.

* :mod:`kdseg.distill.registry`: ``METHODS`` (kind -> class) and ``build_distiller``.
* :mod:`kdseg.distill.options`: typed option blocks per method (no torch; config-time checks).
* :mod:`kdseg.distill.base`: the ``Distiller`` contract every method implements.
* :mod:`kdseg.distill.functional`: pure loss functions, tested on their own.

This package module stays import-light on purpose: the config layer imports
``kdseg.distill.options`` while Snakemake parses the workflow, without loading torch.
"""
