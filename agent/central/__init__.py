"""The central side (issues 5 and 6): the collector that verifies, decrypts, de-duplicates and stores
what the sensors send (store.py, ingest.py, mqtt_in.py, cli.py)."""
