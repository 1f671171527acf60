"""Gaussian expectations and the population objective built from them.

=========================  =========================================================================
module                     holds
=========================  =========================================================================
``expectations``           pair moments ``E[g(u) g(v)]`` and their derivatives: closed forms of each
                           activation, one checked quadrature otherwise
``relu_moments``           ReLU's moments with means: closed forms (Owen's ``T``, Tallis, Leibniz on
                           the conditional law for the deltas)
``objective``              the population loss and gradient at any student point
``committee_integrals``    the committee-machine ODEs' integrals ``I2``, ``J2``, ``I3``, ``I4`` for any
                           activation (closed forms, ReLU's exact 2-D reduction, checked quadrature)
=========================  =========================================================================
"""

__all__: list[str] = []
