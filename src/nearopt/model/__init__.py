"""The problem: networks, activations, input laws, weight files (the first stage of the pipeline).

===============  ===========================================================================
module           holds
===============  ===========================================================================
``network``      :class:`TwoLayerNet` ``f(x) = W2 g(W1 x)``, teachers and inputs by seed
``deep_linear``  :class:`DeepLinearNet` ``f(x) = W_L ... W_1 x``, its problems and weight files
``activations``  :class:`Activation` ``g`` with its derivatives and Gaussian pair moments
``problem``      :class:`Problem`: teacher, student point, trained blocks, :class:`GaussianInputs`
``io``           weight files, atomic writes, strict JSON
``torch_state``  PyTorch state dicts and ``.pt``/``.pth`` files as weight arrays
``torch_io``     networks from ``nn.Sequential`` modules, state dicts and PyTorch files
``datasets``     real inputs (bundled data sets) and their covariances
===============  ===========================================================================

Every later stage imports from here; nothing here imports a later stage.
"""

__all__: list[str] = []
