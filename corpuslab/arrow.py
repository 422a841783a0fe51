"""``pyarrow.compute`` as ``pc``, typed for a checker that cannot see its kernels.

pyarrow builds ``pc.filter``, ``pc.equal``, ``pc.binary_join_element_wise`` and every other
kernel wrapper at import time (``pyarrow.compute._make_global_functions``) and ships no stubs,
so a type checker reports each use as an unknown attribute. This is the same module, typed
``Any`` once, here, with the reason, instead of an ignore at every call. (The third-party
``pyarrow-stubs`` trail pyarrow's releases and type every ``to_pylist()`` value as nullable,
which would flag each column read in the stages.)
"""

from __future__ import annotations

from typing import Any

import pyarrow.compute

pc: Any = pyarrow.compute
