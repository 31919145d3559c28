"""Fruit: apples and oranges measured by colour, size and weight (an Orchard example project).

- `groups`: the measurements feature group (two packing stations, CSV and JSON Lines) and its views;
- `models`: an apple-or-orange classifier and an apple-weight regressor, each as a tree and a network;
- `generate`: a day of synthetic measurements (`orchard generate fruit`).
"""
