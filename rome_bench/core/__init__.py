"""The foundation every stage builds on: the registry, atomic storage, the content-addressed
cache and the records schema. Nothing here imports another rome-bench subpackage."""
