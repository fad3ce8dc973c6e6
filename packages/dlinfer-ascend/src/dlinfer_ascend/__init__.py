"""dlinfer-ascend: the dlinfer kernel adaptor for Huawei Ascend NPUs (torch_npu / CANN / ATB).

Importing this package is cheap: torch_npu is imported only when the backend's ops are loaded
or the backend is activated (see :mod:`dlinfer_ascend.runtime`).
"""

from __future__ import annotations

__version__ = "1.0.0"
BACKEND_NAME = "ascend"
