"""Surf: the surf height at a beach from the swell at its offshore buoy (an Orchard example project).

- `groups`: buoy readings (JSON Lines), beaches (SQL), lifeguards' observations (CSV), and the `surf_height` view;
- `models`: a regression tree and a network;
- `generate`: a day of synthetic buoys, beaches and observations (`orchard generate surf`).
"""
