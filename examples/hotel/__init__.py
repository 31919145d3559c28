"""Hotel platform: bookings, users, web sessions and electricity prices (an Orchard example project).

Each feature-engineering method of the lecture's table has its own module here:
aggregation (`vacancy`: weekly vacancy per hotel), dimensionality reduction
(`embedding`: a session embedding per user), binning (`binning`: age bands);
normalization and one-hot encoding are the view's fitted transformations.

- `groups`: the four raw feeds, the two computed groups and the `booking_cancellation` view;
- `models`: a cancellation classifier;
- `generate`: a day of synthetic bookings, users, clicks and prices (`orchard generate hotel`).
"""
