"""Honest offline evaluation: exact hit rates over the whole catalogue
(``metrics``), the baselines a model must beat (``baselines``), the printed table
(``report``) and the hit-rate plot (``plot``)."""
