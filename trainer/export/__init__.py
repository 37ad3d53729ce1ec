"""From a trained model to a published model version: the query tower
SavedModel (``saved_model``), the ScaNN index with its measured recall
(``index``) and the atomic publish of every file (``publish``)."""
