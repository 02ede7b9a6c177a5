"""shipit: one CI step for container images (tag, build, scan, sign, push)."""

__version__ = "0.1.0"
