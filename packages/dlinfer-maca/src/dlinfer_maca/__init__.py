"""dlinfer backend for MetaX MACA: Triton kernels for the dlinfer op spec on the ``cuda`` device.

Importing this package is cheap (no Triton, no device initialisation); the kernels are
imported by :func:`dlinfer_maca.ops.load_ops` when the backend is activated.
"""

__version__ = "1.0.0"
