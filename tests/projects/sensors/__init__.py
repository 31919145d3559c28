"""sensors: a small Orchard project whose readings arrive on a Kafka topic, for the engine's streaming tests."""
