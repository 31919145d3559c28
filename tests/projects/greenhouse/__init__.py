"""greenhouse: a small Orchard project that lives outside the engine, for the engine's tests.

It uses every extension point: a feature group from CSV and one from SQL, a
view joining them point-in-time, a transformation of its own (`Log1p`), a
scikit-learn compatible estimator class of its own (`ShrunkenRidge`), and a
Keras architecture of its own with a custom layer (`_networks`, imported only
when a network is built or loaded, so that other commands need no TensorFlow).
"""
