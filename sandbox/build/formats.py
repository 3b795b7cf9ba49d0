"""Versions of the builder's output formats: bump one when a layer's bytes change for the same inputs."""

BASE_FORMAT = 3
APP_FORMAT = 3  # 3: build commands run jailed (shifted ids, own /dev, no network)
