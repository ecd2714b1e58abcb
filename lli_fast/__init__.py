"""lli_fast: fast neural-network inversion with learned loss landscapes.

Landscape Learning for Neural Network Inversion (Liu, Mao, Tendulkar, Wang, Vondrick, ICCV 2023).
"""

from lli_fast import _ext  # noqa: F401  (loads lli_fast._C and registers the ops, or warns once)
from lli_fast import backends  # noqa: F401

__version__ = "0.1.0"
