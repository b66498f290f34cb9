"""lagrangian_ad with ``check_finite=False``, on the array problems: the same calls as
`impl_lad` without the pass over every input and gradient that refuses NaN and inf by
default, so that the table shows what that check costs (the peers check nothing).
"""

from __future__ import annotations

import functools

from . import impl_lad
from .impl_lad import available, before_cold, version

__all__ = ["BUILDERS", "LABEL", "available", "before_cold", "version"]

LABEL = "lagrangian_ad (check_finite=False)"

BUILDERS = {
    kind: functools.partial(impl_lad.build, check_finite=False) for kind in ("mlp784", "deq")
}
