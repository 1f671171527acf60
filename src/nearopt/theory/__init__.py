"""Theory beside the numerics: spectral laws of linear networks (``distributions``, ``linear``) and rank predictions (``rank``)."""
