"""dlinfer-camb: the dlinfer kernel adaptor for Cambricon MLUs (torch_mlu + torch_mlu_ops).

Importing this package is cheap: no vendor import, no device initialisation. The vendor
libraries are imported when the backend is activated or its ops are loaded.
"""

from __future__ import annotations

BACKEND_NAME = "camb"
__version__ = "1.0.0"

__all__ = ["BACKEND_NAME", "__version__"]
