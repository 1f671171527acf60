"""Critical points of the population loss: descent, classification, surveys, certificates.

================  =========================================================================
module            holds
================  =========================================================================
``critical``      descent and Newton to a critical point, its class from the exact spectrum
``survey``        many-start surveys: batched descent, polish, families, symmetry
``_relu_jit``     the compiled ReLU descent (numba)
``manifold``      the global-minimum manifold of wider students
``certificate``   certificates that a minimum is strict (Newton-Kantorovich, intervals)
================  =========================================================================
"""

__all__: list[str] = []
