"""Figures: the shared matplotlib style (``plotting``) and the spectrum plot of ``--plot`` (``spectrum``)."""

__all__: list[str] = []
