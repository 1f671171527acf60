"""Gaussian expectations and the population objective built from them.

================  =========================================================================
module            holds
================  =========================================================================
``expectations``  pair moments ``E[g(u) g(v)]`` and their derivatives: closed forms of each
                  activation, one checked quadrature otherwise
``objective``     the population loss and gradient at any student point
``relu_moments``  ReLU's moments with means: closed forms (Owen's ``T``, Tallis, Leibniz on
                  the conditional law for the deltas)
================  =========================================================================
"""

__all__: list[str] = []
